// Starts `bellwether serve` with its embedded default (the simulator in process; Claude through
// the Anthropic adapter, Gemini through the Gemini adapter) on a free loopback port.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const DEMO_KEY = 'sk-sdk-demo-key-000001';

function kernelFreePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

// Holds the abstract Unix socket name "bw-test-port-<port>" until this process exits: the C++
// tests reserve their ports under the same names (tests/support/free_port.h), so no test process
// that ctest runs at the same time is handed this port before the gateway binds it (the gateway
// binds with SO_REUSEPORT: two gateways on one port would both listen, and share the clients).
function reserve(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.on('error', () => resolve(false));
    s.listen({ path: `\0bw-test-port-${port}` }, () => {
      s.unref();
      resolve(true);
    });
  });
}

async function freePort() {
  for (let tries = 0; tries < 1000; ++tries) {
    const port = await kernelFreePort();
    if (await reserve(port)) return port;
  }
  throw new Error('no free loopback port could be reserved');
}

async function waitForPort(port, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.end(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gateway did not listen on ${port}`);
}

export async function startGateway() {
  const binary = process.env.BW_BINARY;
  if (!binary) throw new Error('BW_BINARY is not set');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bw-sdk-'));
  const port = await freePort();
  const child = spawn(binary, ['serve', '--listen', `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      BELLWETHER_DEMO_KEY: DEMO_KEY,
      BELLWETHER_ADMIN_KEY: 'sk-sdk-admin-key-000001',
      BELLWETHER_DB: path.join(dir, 'bellwether.db'),
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitForPort(port, 15000);
  return {
    baseURL: `http://127.0.0.1:${port}`,
    stop() {
      child.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
