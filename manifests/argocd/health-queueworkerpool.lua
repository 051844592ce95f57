-- Argo CD health of a QueueWorkerPool (jobqueue.dev/v1alpha1), from the status the operator
-- writes. In order: the operator has not seen this generation yet -> Progressing; a
-- Degraded condition that is True -> Degraded; Ready True -> Healthy; anything else
-- (workers still starting, the queue not found yet) -> Progressing, with the Ready
-- condition's message when there is one.
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, item in ipairs(conditions) do
    if item.type == wanted then
      return item
    end
  end
  return nil
end

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
local status = obj.status
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local degraded = condition(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
else
  hs.message = "Waiting for the workers to become ready"
end
return hs
