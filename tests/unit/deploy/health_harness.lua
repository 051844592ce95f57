-- Runs one Argo CD health script against one object, the way Argo CD does: the object is
-- the global `obj`, and the script's chunk returns a table with `status` and `message`.
-- Usage: lua5.1 health_harness.lua <health script> <object file>
-- The object file is a Lua chunk returning the object as a table (the tests write it from
-- the object's JSON). Prints the status on the first line and the message on the second.
local script, object = arg[1], arg[2]
obj = dofile(object)
local verdict = dofile(script)
if type(verdict) ~= "table" or type(verdict.status) ~= "string" then
  io.stderr:write("the health script returned no status\n")
  os.exit(1)
end
print(verdict.status)
print(verdict.message or "")
