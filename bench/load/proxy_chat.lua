-- wrk script for proxy_bench.sh: one small non-streaming chat completion per request (the same
-- bytes for every target: the simulator directly, Bellwether, nginx). The API key is the first
-- script argument (wrk ... -s proxy_chat.lua URL -- KEY); the simulator and nginx ignore it.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}'

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. (args[1] or "none")
end
