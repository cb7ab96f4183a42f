-- wrk script for isolated.sh: the same ~1 KB chat request for every target.
-- Arguments (wrk ... -s isolated_chat.lua URL -- KEY MODEL STREAM): the API key (nginx ignores
-- it), the model name and "1" for a streaming request. max_tokens (128) is above what the
-- fixed answer reports (82 completion tokens), so no answer costs more than its reservation.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local function request_body(model, stream)
  local system = "You are a concise assistant for a support desk. Answer in plain text, keep " ..
      "every answer under one hundred words, never invent order numbers, and ask for the " ..
      "order number when the customer did not give one. Be friendly but brief."
  local user = "Hello there. I ordered a pair of walking boots three weeks ago and the " ..
      "tracking page has said 'label created' ever since. The order number is 48213-77. " ..
      "Could you tell me whether the parcel has left the warehouse, and if it has not, " ..
      "whether I can cancel the order and get a refund to the card I paid with? I would " ..
      "also like to know whether the boots come in a wide fit, because the last pair I " ..
      "bought from you pinched at the toes after a long day. Thank you for your help."
  local s = '{"model":"' .. model .. '","messages":[{"role":"system","content":"' .. system ..
      '"},{"role":"user","content":"' .. user .. '"}],"max_tokens":128,"temperature":0.2'
  if stream then s = s .. ',"stream":true' end
  return s .. "}"
end

wrk.body = request_body("bench", false)

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. (args[1] or "none")
  wrk.body = request_body(args[2] or "bench", args[3] == "1")
end
