// The official Anthropic Node SDK against the gateway: messages.create, messages.stream and
// countTokens, to Claude through the Anthropic adapter (same format) and to GPT and Gemini
// (translated); a wrong key surfaces as the SDK's own AuthenticationError.
import assert from 'node:assert/strict';
import test from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { DEMO_KEY, startGateway } from './gateway.mjs';

const gw = await startGateway();
test.after(() => gw.stop());
// The SDK sends the key in x-api-key, as Claude Code does.
const client = new Anthropic({ apiKey: DEMO_KEY, baseURL: gw.baseURL, maxRetries: 0 });

for (const model of ['claude-sonnet-4.5', 'gpt-4.1', 'gemini-2.5-flash']) {
  test(`messages.create (${model})`, async () => {
    const m = await client.messages.create({
      model, max_tokens: 16, system: 'be brief', messages: [{ role: 'user', content: 'Say hello' }],
    });
    assert.equal(m.type, 'message');
    assert.equal(m.role, 'assistant');
    assert.equal(m.content[0].type, 'text');
    assert.match(m.content[0].text, /gateway/);
    assert.ok(['end_turn', 'max_tokens'].includes(m.stop_reason));
    assert.ok(m.usage.input_tokens > 0);
    assert.ok(m.usage.output_tokens > 0);
  });

  test(`messages.stream (${model})`, async () => {
    const stream = client.messages.stream({
      model, max_tokens: 16, messages: [{ role: 'user', content: 'Say hello' }],
    });
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    assert.match(text, /gateway/);
    assert.equal(final.content[0].text, text);
    assert.ok(final.usage.output_tokens > 0);
  });
}

test('tool use through messages.create', async () => {
  const m = await client.messages.create({
    model: 'claude-sonnet-4.5', max_tokens: 64,
    tools: [{ name: 'get_weather', input_schema: { type: 'object', properties: { query: { type: 'string' } } } }],
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
  });
  assert.equal(m.stop_reason, 'tool_use');
  const use = m.content.find((b) => b.type === 'tool_use');
  assert.equal(use.name, 'get_weather');
  assert.deepEqual(use.input, { query: 'sim' });
});

test('countTokens', async () => {
  const r = await client.messages.countTokens({
    model: 'claude-sonnet-4.5', messages: [{ role: 'user', content: 'Hello, how are you today?' }],
  });
  assert.ok(r.input_tokens > 0);
});

test('a wrong key is an AuthenticationError', async () => {
  const bad = new Anthropic({ apiKey: 'sk-wrong', baseURL: gw.baseURL, maxRetries: 0 });
  await assert.rejects(
    bad.messages.create({ model: 'claude-sonnet-4.5', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
    (err) => {
      assert.ok(err instanceof Anthropic.AuthenticationError, `got ${err?.constructor?.name}`);
      assert.equal(err.status, 401);
      assert.equal(err.error?.error?.type, 'authentication_error');
      return true;
    });
});
