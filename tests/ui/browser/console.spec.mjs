// Drives the operator's console in the system Chromium, against a gateway and simulators that
// tests/integration/console_browser_test.cc started. One scenario per run:
//   node console.spec.mjs <scenario> '<json: ui, gw, admin_key, client_key, batch_key, sim_a, sim_b, out>'
// Exit status 0 = passed; the reason of a failure is printed on stderr.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const [scenario, json] = process.argv.slice(2);
const env = JSON.parse(json || "{}");
const CHROMIUM = process.env.BW_CHROMIUM || "/usr/bin/chromium";

function fail(msg) { throw new Error(msg); }
function check(cond, msg) { if (!cond) fail(msg); }
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function chat(key, model, extraHeaders, stream) {
  const r = await fetch(env.gw + "/v1/chat/completions", {
    method: "POST",
    headers: Object.assign({ "Authorization": "Bearer " + key, "Content-Type": "application/json" }, extraHeaders || {}),
    body: JSON.stringify({ model, max_tokens: 5, stream: !!stream, messages: [{ role: "user", content: "hello" }] }),
  });
  await r.text();
  return r.status;
}

// Steady load from `workers` concurrent loops until stop() (bounded by `maxMs` anyway).
function load(key, model, workers, maxMs, headers, stream) {
  let stopped = false;
  const until = Date.now() + maxMs;
  const counts = { sent: 0, ok: 0 };
  const loops = Array.from({ length: workers }, async () => {
    while (!stopped && Date.now() < until) {
      counts.sent++;
      try { if ((await chat(key, model, headers, stream)) === 200) counts.ok++; } catch (e) { await sleep(20); }
    }
  });
  return { counts, stop: async () => { stopped = true; await Promise.all(loops); } };
}

async function simControl(port, body) {
  const r = await fetch(`http://127.0.0.1:${port}/sim/control`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  check(r.status === 200, "sim control: HTTP " + r.status);
}

async function login(page, key) {
  await page.goto(env.ui + "/ui/");
  await page.waitForURL(/\/ui\/login$/);
  await page.getByLabel("Admin key").fill(key);
  await page.getByRole("button", { name: "Log in" }).click();
}

async function loggedIn(page) {
  await login(page, env.admin_key);
  await page.waitForURL(/\/ui\/(#.*)?$/);
  await page.getByRole("heading", { name: "Live" }).waitFor();
}

async function tileNumber(page, id) {
  const t = await page.locator(`#${id} .value`).textContent();
  return Number(String(t).replace(/[^0-9.]/g, "")) || 0;
}

const scenarios = {
  // A wrong key is refused and says so; the right key opens the Live page.
  async login(page) {
    await login(page, "not-the-admin-key-at-all");
    await page.locator("#login-error").waitFor();
    check(/not the admin key/.test(await page.locator("#login-error").textContent()), "no error message for a wrong key");
    check(page.url().endsWith("/ui/login"), "a wrong key left the login page: " + page.url());
    const cookies = await page.context().cookies();
    check(!cookies.some(c => c.name === "bw_console"), "a wrong key got a session cookie");
    await loggedIn(page);
    const c = (await page.context().cookies()).find(c => c.name === "bw_console");
    check(c && c.httpOnly && c.sameSite === "Strict", "session cookie flags: " + JSON.stringify(c));
    // The page cannot read its own session cookie.
    check(!(await page.evaluate(() => document.cookie)).includes("bw_console"), "cookie visible to scripts");
    // Keyboard: Tab from the top reaches the skip link, then the navigation.
    await page.keyboard.press("Tab");
    check((await page.evaluate(() => document.activeElement.textContent)).includes("Skip"), "first Tab is not the skip link");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: "Spend" }).waitFor();
  },

  // Under load the Live page's request rate and in-flight figures leave zero, without a reload.
  async live(page) {
    await loggedIn(page);
    await page.locator("#live-empty").waitFor();  // no traffic yet: the empty state shows
    check(/try this curl/.test(await page.locator("#live-empty").textContent()), "empty state does not say what to do");
    const before = await tileNumber(page, "tile-rps");
    check(before === 0, "requests/s before any traffic: " + before);
    const l = load(env.client_key, "gpt-4.1", 6, 20000);
    let seen = 0;
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline && seen <= 0) {
      await sleep(500);
      seen = await tileNumber(page, "tile-rps");
    }
    await l.stop();
    check(seen > 0, "requests/s never moved under load (sent " + l.counts.sent + ")");
    check(await page.locator("#live-empty").isHidden(), "the empty state stayed up under load");
    const tokens = await tileNumber(page, "tile-tokens");
    check(tokens > 0, "tokens/s did not move");
    check(await page.locator("#live-charts figure").count() >= 6, "rolling charts missing");
    console.log(JSON.stringify({ rps_seen: seen, tokens, sent: l.counts.sent }));
  },

  // A key made in the UI serves a request; once revoked in the UI it is refused.
  async keys(page) {
    await loggedIn(page);
    await page.getByRole("link", { name: "Keys" }).click();
    await page.getByRole("heading", { name: "Create a key" }).waitFor();
    // A validation error from the admin API shows in the form.
    await page.locator("#kc-name").fill("bad-plan-key");
    await page.locator("#kc-plan").fill("no-such-plan");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.locator("#kc-error").filter({ hasText: "plan" }).waitFor();
    await page.locator("#kc-plan").fill("");
    await page.locator("#kc-name").fill("ui-made");
    await page.locator("#kc-cap").fill("5");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.locator("#new-secret").waitFor();
    const secret = (await page.locator("#new-secret").textContent()).trim();
    check(secret.length > 16, "no secret shown");
    check((await chat(secret, "gpt-4.1")) === 200, "the new key was refused");
    // Once hidden, the secret is gone from the page.
    await page.getByRole("button", { name: /copied it/ }).click();
    check(!(await page.content()).includes(secret), "the secret is still in the page");
    page.once("dialog", d => d.accept());
    await page.getByRole("button", { name: "Revoke ui-made" }).click();
    await page.locator("tr", { hasText: "ui-made" }).locator(".badge.revoked").waitFor();
    const after = await chat(secret, "gpt-4.1");
    check(after === 401, "the revoked key still works: HTTP " + after);
    await page.reload();
    await page.getByRole("heading", { name: "Keys", level: 1 }).waitFor();
    check(!(await page.content()).includes(secret), "the secret came back after a reload");
  },

  // Deployment a fails in the simulator; its breaker shows open on the Upstreams page.
  async breaker(page) {
    await loggedIn(page);
    await simControl(env.sim_a, { error_status: 503, error_rate: 1.0 });
    for (let i = 0; i < 12; i++) await chat(env.client_key, "gpt-4.1");
    await page.getByRole("link", { name: "Upstreams" }).click();
    const badge = page.locator('.badge[data-deployment="m-a"]');
    await badge.filter({ hasText: "open" }).waitFor({ timeout: 10000 });
    check((await badge.textContent()) === "open", "breaker of m-a: " + (await badge.textContent()));
    await page.locator("#transitions").filter({ hasText: "m-a" }).waitFor({ timeout: 10000 });
    await simControl(env.sim_a, { error_status: 0, error_rate: 0 });
  },

  // A failed batch request lands in the DLQ; Replay in the UI serves it once the upstream is back.
  async dlq(page) {
    await simControl(env.sim_a, { error_status: 503, error_rate: 1.0 });
    await simControl(env.sim_b, { error_status: 503, error_rate: 1.0 });
    const s = await chat(env.batch_key, "gpt-4.1");
    check(s >= 500, "the batch request did not fail: " + s);
    await simControl(env.sim_a, { error_status: 0, error_rate: 0 });
    await simControl(env.sim_b, { error_status: 0, error_rate: 0 });
    await loggedIn(page);
    await page.getByRole("link", { name: "Dead letters" }).click();
    const inspect = page.getByRole("button", { name: /^Inspect entry/ }).first();
    await inspect.waitFor();
    await inspect.click();
    await page.locator("#dlq-body").filter({ hasText: "hello" }).waitFor();
    check(!(await page.content()).includes(env.batch_key), "the batch key appears in the DLQ page");
    await page.getByRole("button", { name: /^Replay entry/ }).first().click();
    await page.locator("#dlq-result").filter({ hasText: "replayed: HTTP 200" }).waitFor({ timeout: 15000 });
    await page.locator("td", { hasText: /\d{1,2}:\d{2}/ }).first().waitFor();
    check(!(await page.locator("tbody tr").first().textContent()).includes("no"), "the entry is not marked replayed");
  },

  // No page shows a secret: the admin key, client keys, the provider key in the config.
  async secrets(page) {
    await loggedIn(page);
    for (const p of ["live", "spend", "keys", "upstreams", "dead-letters", "config"]) {
      await page.getByRole("link", { name: { live: "Live", spend: "Spend", keys: "Keys", upstreams: "Upstreams", "dead-letters": "Dead letters", config: "Config" }[p] }).click();
      await sleep(1200);
      const html = await page.content();
      for (const s of [env.admin_key, env.client_key, env.batch_key, env.provider_key]) {
        check(!html.includes(s), `page ${p} shows a secret (${s.slice(0, 6)}…)`);
      }
    }
    check((await page.locator("#config-yaml").textContent()).includes("<redacted>"), "the config view redacts nothing");
  },

  // Screenshots of every page during a spike (docs/img); not a test.
  async screenshots(page) {
    await page.setViewportSize({ width: 1440, height: 900 });
    await loggedIn(page);
    // A few dead letters: both deployments down for a moment while batch requests arrive.
    await simControl(env.sim_a, { error_status: 503, error_rate: 1.0 });
    await simControl(env.sim_b, { error_status: 503, error_rate: 1.0 });
    for (let i = 0; i < 4; i++) await chat(env.batch_key, "gpt-4.1");
    await simControl(env.sim_b, { error_status: 0, error_rate: 0 });
    await simControl(env.sim_a, { error_status: 0, error_rate: 0 });
    // The spike: a steady base, then three times as many clients, streaming ones included.
    const base = load(env.client_key, "gpt-4.1", 6, 70000);
    await sleep(12000);
    const spike = [
      load(env.client_key, "gpt-4.1", 12, 50000),
      load(env.client_key, "gpt-4.1", 4, 50000, { "X-Priority": "urgent" }, true),
      load(env.batch_key, "gpt-4.1", 8, 50000),
    ];
    await sleep(8000);
    await simControl(env.sim_a, { error_status: 503, error_rate: 0.5 });
    await sleep(16000);
    const shots = { live: "Live", spend: "Spend", keys: "Keys", upstreams: "Upstreams", "dead-letters": "Dead letters", config: "Config" };
    for (const [p, name] of Object.entries(shots)) {
      await page.getByRole("link", { name }).click();
      await sleep(p === "live" ? 500 : 1500);
      await page.screenshot({ path: path.join(env.out, `console-${p}.png`), fullPage: p === "live" });
      if (p === "live") await page.screenshot({ path: path.join(env.out, "console-live-top.png") });
    }
    await simControl(env.sim_a, { error_status: 0, error_rate: 0 });
    await Promise.all([base.stop(), ...spike.map(l => l.stop())]);
  },
};

async function main() {
  const fn = scenarios[scenario];
  if (!fn) fail("unknown scenario " + scenario);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bw-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  ctx.setDefaultTimeout(20000);
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) errors.push(m.text()); });
  try {
    await fn(page);
    check(errors.length === 0, "errors in the page: " + errors.join(" | "));
  } finally {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => { console.log("PASS " + scenario); process.exit(0); },
  e => { console.error("FAIL " + scenario + ": " + (e && e.stack || e)); process.exit(1); });
