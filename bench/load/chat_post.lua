-- wrk script: one small non-streaming chat completion per request, with the API key passed as
-- the first script argument (wrk ... -s chat_post.lua URL -- KEY).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}'

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. (args[1] or "")
end
