// The official OpenAI Node SDK against the gateway: the Responses API, buffered and streamed,
// to an OpenAI-format upstream (passthrough) and to Claude through the Anthropic adapter
// (translated); a wrong key surfaces as the SDK's own AuthenticationError.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';
import { DEMO_KEY, startGateway } from './gateway.mjs';

const gw = await startGateway();
test.after(() => gw.stop());
const client = new OpenAI({ apiKey: DEMO_KEY, baseURL: `${gw.baseURL}/v1`, maxRetries: 0 });

for (const model of ['gpt-4.1', 'claude-sonnet-4.5', 'gemini-2.5-flash']) {
  test(`responses.create buffered (${model})`, async () => {
    const r = await client.responses.create({ model, input: 'Say hello', max_output_tokens: 16 });
    assert.equal(r.object, 'response');
    assert.match(r.output_text, /gateway/);
    assert.ok(r.usage.input_tokens > 0);
    assert.ok(r.usage.output_tokens > 0);
  });

  test(`responses.create stream (${model})`, async () => {
    const stream = await client.responses.create({
      model, input: 'Say hello', max_output_tokens: 16, stream: true,
    });
    let text = '';
    let completed = null;
    const types = [];
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed' || ev.type === 'response.incomplete') completed = ev.response;
    }
    assert.equal(types[0], 'response.created');
    assert.match(text, /gateway/);
    assert.ok(completed, `no completed event in ${types.join(',')}`);
    assert.ok(completed.usage.output_tokens > 0);
  });
}

test('responses.stream helper assembles the final response', async () => {
  const stream = client.responses.stream({ model: 'claude-sonnet-4.5', input: 'Hi', max_output_tokens: 8 });
  const final = await stream.finalResponse();
  assert.match(final.output_text, /gateway/);
});

test('chat.completions to Claude and Gemini through their native adapters', async () => {
  for (const model of ['claude-sonnet-4.5', 'gemini-2.5-flash']) {
    const r = await client.chat.completions.create({
      model, max_tokens: 8, messages: [{ role: 'user', content: 'hi' }],
    });
    assert.match(r.choices[0].message.content, /gateway/);
    assert.ok(r.usage.prompt_tokens > 0);
  }
});

test('a wrong key is an AuthenticationError', async () => {
  const bad = new OpenAI({ apiKey: 'sk-wrong', baseURL: `${gw.baseURL}/v1`, maxRetries: 0 });
  await assert.rejects(bad.responses.create({ model: 'gpt-4.1', input: 'x' }), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}`);
    assert.equal(err.status, 401);
    return true;
  });
});
