#!/usr/bin/env python3
"""CPU time of the gateway process per request: passthrough vs translated, buffered and streamed.

Starts `bellwether sim` (zero latency) and `bellwether serve` on free loopback ports, sends N
sequential requests per case over one keep-alive connection, and reads the gateway's CPU time
(utime + stime from /proc/<pid>/stat) before and after each case. Usage:
  bench/translation_overhead.py build/release/bellwether [N]
"""
import http.client, json, os, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
TICK = os.sysconf('SC_CLK_TCK')


def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p


def wait(port):
    for _ in range(200):
        try:
            socket.create_connection(('127.0.0.1', port), 0.1).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit('no listener on %d' % port)


def cpu(pid):
    f = open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


d = tempfile.mkdtemp()
sp, gp = free_port(), free_port()
open(d + '/sim.yaml', 'w').write('sim:\n  workers: 1\n  zero_latency: true\n  max_tokens: limit\n'
                                 '  defaults: {completion_tokens: 16}\n')
base = 'http://127.0.0.1:%d' % sp
open(d + '/gw.yaml', 'w').write(f'''listen: 127.0.0.1:{gp}
workers: 1
access_log: {{path: {d}/access.log}}
providers:
  oa: {{type: openai, base_url: "{base}/v1"}}
  an: {{type: anthropic, base_url: "{base}/v1"}}
  ge: {{type: gemini, base_url: "{base}/v1beta"}}
plans:
  bare: {{limits: []}}
model_groups:
  o: {{deployments: [{{provider: oa, model: o}}]}}
  a: {{deployments: [{{provider: an, model: a}}]}}
  g: {{deployments: [{{provider: ge, model: g}}]}}
keys:
  - {{name: k, key: sk-bench-000000000001, plan: bare}}
''')
sim = subprocess.Popen([BIN, 'sim', '--config', d + '/sim.yaml', '--listen', '127.0.0.1:%d' % sp],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
gw = subprocess.Popen([BIN, 'serve', '--config', d + '/gw.yaml'], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
try:
    wait(sp); wait(gp)
    msg = [{'role': 'user', 'content': 'Hello there, how are you today?'}]
    cases = [
        ('chat -> openai (passthrough)', '/v1/chat/completions', {'model': 'o', 'messages': msg}),
        ('messages -> anthropic (passthrough)', '/v1/messages', {'model': 'a', 'max_tokens': 64, 'messages': msg}),
        ('chat -> anthropic (translated)', '/v1/chat/completions', {'model': 'a', 'messages': msg}),
        ('chat -> gemini (translated)', '/v1/chat/completions', {'model': 'g', 'messages': msg}),
        ('messages -> openai (translated)', '/v1/messages', {'model': 'o', 'max_tokens': 64, 'messages': msg}),
        ('responses -> anthropic (translated)', '/v1/responses', {'model': 'a', 'input': 'Hello there'}),
    ]
    print('%-40s %8s %14s %14s' % ('case', 'N', 'buffered us', 'streamed us'))
    for name, path, body in cases:
        row = []
        for stream in (False, True):
            b = dict(body); b['stream'] = stream
            data = json.dumps(b)
            c = http.client.HTTPConnection('127.0.0.1', gp)
            hdr = {'Authorization': 'Bearer sk-bench-000000000001', 'Content-Type': 'application/json'}
            for _ in range(50):  # warm up
                c.request('POST', path, data, hdr); r = c.getresponse(); r.read()
            t0 = cpu(gw.pid)
            for _ in range(N):
                c.request('POST', path, data, hdr); r = c.getresponse(); r.read()
                assert r.status == 200, (name, r.status)
            row.append((cpu(gw.pid) - t0) / N * 1e6)
            c.close()
        print('%-40s %8d %14.1f %14.1f' % (name, N, row[0], row[1]))
finally:
    gw.terminate(); sim.terminate(); gw.wait(); sim.wait()
