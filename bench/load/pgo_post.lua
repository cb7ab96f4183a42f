-- wrk script for scripts/pgo-train.sh: POSTs one body read from a file.
-- Arguments (wrk ... -s pgo_post.lua URL -- HEADER KEY BODY_FILE): the header that carries the
-- key ("authorization" sends "Bearer KEY", any other name sends the key as it is), the key and
-- the file holding the JSON body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  if args[1] == "authorization" then
    wrk.headers["Authorization"] = "Bearer " .. args[2]
  else
    wrk.headers[args[1]] = args[2]
  end
  local f = assert(io.open(args[3], "rb"))
  wrk.body = f:read("*a")
  f:close()
end
