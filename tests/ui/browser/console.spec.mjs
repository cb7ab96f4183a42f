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

async function chat(key, model, extraHeaders, stream, signal) {
  const r = await fetch(env.gw + "/v1/chat/completions", {
    method: "POST",
    signal,
    headers: Object.assign({ "Authorization": "Bearer " + key, "Content-Type": "application/json" }, extraHeaders || {}),
    body: JSON.stringify({ model, max_tokens: 5, stream: !!stream, messages: [{ role: "user", content: "hello" }] }),
  });
  await r.text();
  return r.status;
}

// Steady load from `workers` concurrent loops until stop() (bounded by `maxMs` anyway). A refused
// request is retried after a pause, so that refusals do not turn into a busy loop; stop() aborts
// requests still waiting in the gateway's queue.
function load(key, model, workers, maxMs, headers, stream) {
  let stopped = false;
  const until = Date.now() + maxMs;
  const counts = { sent: 0, ok: 0, refused: 0 };
  const pending = new Set();
  const loops = Array.from({ length: workers }, async () => {
    while (!stopped && Date.now() < until) {
      counts.sent++;
      const abort = new AbortController();
      pending.add(abort);
      try {
        const status = await chat(key, model, headers, stream, abort.signal);
        if (status === 200) counts.ok++;
        else { counts.refused++; await sleep(100); }
      } catch (e) { await sleep(20); } finally { pending.delete(abort); }
    }
  });
  return { counts, stop: async () => { stopped = true; for (const a of pending) a.abort(); await Promise.all(loops); } };
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

// Opens a page from the navigation and waits until its data has been rendered.
const PAGES = {
  live: ["Live", "#live-tiles .tile"],
  spend: ["Spend", "#spend-day > *"],
  keys: ["Keys", "#keys-list > *"],
  upstreams: ["Upstreams", "#deployments table"],
  "dead-letters": ["Dead letters", "#dlq-list > *"],
  config: ["Config", "#config-yaml:not(:empty)"],
};
async function openPage(page, p) {
  const [name, ready] = PAGES[p];
  await page.getByRole("link", { name, exact: true }).click();
  await page.locator(`#page-${p}:not([hidden])`).waitFor();
  await page.locator(`#page-${p} ${ready}`).first().waitFor();
}

// The background colour of a bar's filled part, as [r, g, b].
// The fill colour of a capacity bar as [r, g, b]. The Live page redraws its tables every refresh,
// so the element the locator found can be detached by the time it is read (a detached element has
// no computed style): read again until an attached one answers.
async function barColour(bar) {
  let last = "";
  for (let i = 0; i < 50; i++) {
    last = await bar.evaluate(b => (b.isConnected && b.firstElementChild ? getComputedStyle(b.firstElementChild).backgroundColor : ""));
    const m = last.match(/\d+/g);
    if (m && m.length >= 3) return m.slice(0, 3).map(Number);
    await sleep(100);
  }
  fail(`the colour of a capacity bar could not be read: "${last}"`);
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
    const l = load(env.client_key, "gpt-4.1", 6, 30000);
    const moved = id => document.querySelector(`#${id} .value`) &&
      Number(document.querySelector(`#${id} .value`).textContent.replace(/[^0-9.]/g, "")) > 0;
    try {
      await page.waitForFunction(moved, "tile-rps", { timeout: 20000 });
      await page.waitForFunction(moved, "tile-tokens", { timeout: 20000 });
    } catch (e) {
      fail("requests/s or tokens/s never moved under load (sent " + l.counts.sent + "): " + e.message);
    } finally {
      await l.stop();
    }
    const seen = await tileNumber(page, "tile-rps");
    check(await page.locator("#live-empty").isHidden(), "the empty state stayed up under load");
    const tokens = await tileNumber(page, "tile-tokens");
    check(await page.locator("#live-charts figure").count() >= 6, "rolling charts missing");
    console.log(JSON.stringify({ rps_seen: seen, tokens, sent: l.counts.sent }));
  },

  // Five wrong keys within a minute: the sixth try is refused with 429 and Retry-After, the page
  // says when to try again, and the right key is refused as well until then.
  async throttle(page) {
    const loginPost = () => page.waitForResponse(r => r.url().endsWith("/ui/login") && r.request().method() === "POST");
    for (let i = 1; i <= 5; i++) {
      const resp = loginPost();
      await login(page, "wrong-admin-key-number-" + i);
      check((await resp).status() === 401, `wrong key ${i}: HTTP ${(await resp).status()}`);
      await page.locator("#login-error").filter({ hasText: "not the admin key" }).waitFor();
    }
    for (const [what, key] of [["a sixth wrong key", "wrong-admin-key-number-6"], ["the right key", env.admin_key]]) {
      const pending = loginPost();
      await login(page, key);
      const resp = await pending;
      check(resp.status() === 429, `${what} after five wrong ones: HTTP ${resp.status()}`);
      const retryAfter = Number(resp.headers()["retry-after"]);
      check(retryAfter >= 1 && retryAfter <= 60, `${what}: Retry-After ${resp.headers()["retry-after"]}`);
      const msg = page.locator("#login-error");
      await msg.filter({ hasText: "Too many wrong keys" }).waitFor();
      const m = /Try again in (\d+) s/.exec(await msg.textContent());
      check(m && Math.abs(Number(m[1]) - retryAfter) <= 1, `${what}: the page says "${await msg.textContent()}", Retry-After ${retryAfter}`);
      check(page.url().endsWith("/ui/login"), `${what} left the login page: ${page.url()}`);
      const cookies = await page.context().cookies();
      check(!cookies.some(c => c.name === "bw_console"), `${what} got a session while throttled`);
    }
    console.log("throttled as expected");
  },

  // A provider tier binds: deployment m-t is configured at 1,200 requests/min but its simulator
  // allows 12 and says so in x-ratelimit-* headers. Twelve concurrent clients use up the tier's
  // minute before the first answer (400 ms) teaches the gateway the tier. The Live page shows requests
  // waiting for deployment_rpm, the learned limit beside the configured one, and the remaining
  // capacity bar turning from green to red; the Upstreams page shows the same.
  async capacity(page) {
    await loggedIn(page);
    const liveBar = page.locator('#capacity .bar[data-deployment="m-t"]');
    await liveBar.waitFor();
    check(!/\b(warn|bad)\b/.test(await liveBar.getAttribute("class")), "the bar of an unused deployment: " + (await liveBar.getAttribute("class")));
    let [r, g] = await barColour(liveBar);
    check(g > r, `the bar of an unused deployment is not green: rgb ${r},${g}`);
    check((await page.locator('#capacity .learned[data-deployment="m-t"]').textContent()) === "–", "a limit was learned before any traffic");
    check((await page.locator('#queue-reasons [data-reason="deployment_rpm"]').textContent()) === "0", "requests wait before any traffic");
    for (const reason of ["concurrency", "deployment_rpm", "deployment_tpm", "key_limit"]) {
      await page.locator(`#queue-reasons [data-reason="${reason}"]`).waitFor();
    }
    const l = load(env.client_key, "tiered", 12, 90000);
    try {
      await page.locator('#capacity .learned[data-deployment="m-t"]').filter({ hasText: /^12$/ }).waitFor({ timeout: 30000 });
      await page.locator('#queue-reasons [data-reason="deployment_rpm"]').filter({ hasText: /^[1-9]\d*$/ }).waitFor({ timeout: 30000 });
      await page.locator('#capacity .bar.bad[data-deployment="m-t"]').waitFor({ timeout: 30000 });
      [r, g] = await barColour(liveBar);
      check(r > g, `the bar of an exhausted deployment is not red: rgb ${r},${g}`);
      const row = page.locator("#capacity tr", { has: page.locator('.bar[data-deployment="m-t"]') });
      check((await row.textContent()).includes("1,200"), "the configured limit is not shown beside the learned one: " + (await row.textContent()));
      await openPage(page, "upstreams");
      const up = page.locator("#deployments tr", { has: page.locator('.badge[data-deployment="m-t"]') });
      await up.locator(".learned").filter({ hasText: /^12$/ }).waitFor();
      check((await up.textContent()).includes("1,200"), "Upstreams: no configured limit: " + (await up.textContent()));
      await page.locator('#deployments .bar.bad[data-deployment="m-t"]').waitFor();
    } catch (e) {
      // What the page was given, to tell a slow page from a gateway that paced differently.
      const state = await page.evaluate(async () => {
        const d = await (await fetch("/ui/api/live?since=" + (Date.now() - 5000))).json();
        return { deployment: d.now.deployments.find(x => x.id === "m-t"), qr: d.samples.map(x => x.qr) };
      }).catch(x => String(x));
      fail(e.message + "\nlive state: " + JSON.stringify(state) + "\nload: " + JSON.stringify(l.counts));
    } finally {
      await l.stop();
    }
    check(l.counts.ok > 0 && l.counts.ok <= 12, `requests served under a tier of 12/min: ${l.counts.ok} of ${l.counts.sent}`);
    console.log(JSON.stringify(l.counts));
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
    // The entry's "replayed" column (the 8th) changes from "no" to the time of the replay.
    await page.waitForFunction(() => {
      const td = document.querySelector("#dlq-list tbody tr td:nth-child(8)");
      return td && /\d{1,2}:\d{2}/.test(td.textContent);
    }, null, { timeout: 15000 });
  },

  // No page shows a secret: the admin key, client keys, the provider key in the config.
  async secrets(page) {
    await loggedIn(page);
    await chat(env.client_key, "gpt-4.1");  // so that spend and the live figures have something
    for (const p of Object.keys(PAGES)) {
      await openPage(page, p);
      const html = await page.content();
      for (const s of [env.admin_key, env.client_key, env.batch_key, env.provider_key]) {
        check(!html.includes(s), `page ${p} shows a secret (${s.slice(0, 6)}…)`);
      }
    }
    check((await page.locator("#config-yaml").textContent()).includes("<redacted>"), "the config view redacts nothing");
  },

  // Without a session every console route refuses (pages redirect to the login form); with one,
  // a change needs the page's CSRF token and the same origin: a form posted from another
  // origin (the data-plane port of the same host: same site, so the SameSite cookie goes along)
  // changes nothing.
  async security(page) {
    const routes = ["/ui/", "/ui/index.html", "/ui/static/console.js", "/ui/api/live", "/ui/api/info", "/ui/api/config",
      "/ui/vendor/uPlot.iife.min.js", "/ui/vendor/uPlot.min.css", "/ui/vendor/uPlot.LICENSE"];
    for (const r of routes) {
      const resp = await page.request.get(env.ui + r, { maxRedirects: 0 });
      const html = r === "/ui/" || r === "/ui/index.html";
      check(html ? resp.status() === 303 && resp.headers()["location"] === "/ui/login" : resp.status() === 401,
        `${r} without a session: HTTP ${resp.status()}`);
    }
    await loggedIn(page);
    const c = (await page.context().cookies()).find(c => c.name === "bw_console");
    check(c && c.httpOnly && c.sameSite === "Strict" && !c.secure && c.expires > Date.now() / 1000 && c.expires < Date.now() / 1000 + 8 * 3600 + 60,
      "session cookie: " + JSON.stringify(c));
    // Same origin, but no token.
    const noToken = await page.evaluate(async () => {
      const r = await fetch("/admin/keys", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "no-token" }) });
      return [r.status, await r.text()];
    });
    check(noToken[0] === 403 && noToken[1].includes("csrf"), "a change without the CSRF token: " + noToken.join(" "));
    // Another origin posts a key and a logout with the browser's cookie.
    const other = await page.context().newPage();
    await other.goto(env.gw + "/healthz").catch(() => {});
    await other.evaluate(async ui => {
      const opts = { method: "POST", mode: "no-cors", credentials: "include", headers: { "Content-Type": "text/plain" } };
      await fetch(ui + "/admin/keys", Object.assign({ body: JSON.stringify({ name: "made-cross-site" }) }, opts)).catch(() => {});
      await fetch(ui + "/ui/logout", opts).catch(() => {});
    }, env.ui);
    await other.close();
    await openPage(page, "keys");
    check(!(await page.locator("#keys-list").textContent()).includes("made-cross-site"), "a cross-site POST created a key");
    const still = await page.evaluate(async () => (await fetch("/ui/api/info")).status);
    check(still === 200, "a cross-site POST logged the session out: HTTP " + still);
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
      load(env.client_key, "tiered", 12, 50000),  // past the provider's tier: deployment_rpm waits
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
