-- Argo CD health of RecognitionJob (docs/status.md). It reads only what the operator
-- wrote, and agrees with kstatus: Healthy once Complete, Degraded when Failed or Stalled
-- (a shard failed for good, the model is missing, the spec is invalid), Progressing while
-- shards run or wait (the message names a pod that waits on the scheduler or an image).
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sightline operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local found = {}
for _, c in ipairs(status.conditions) do
  found[c.type] = c
end
local function is_true(t)
  return found[t] ~= nil and found[t].status == "True"
end
local function said(t)
  return found[t].reason .. ": " .. (found[t].message or "")
end
if is_true("Failed") then
  hs.status = "Degraded"
  hs.message = said("Failed")
elseif is_true("Complete") then
  hs.status = "Healthy"
  hs.message = said("Complete")
elseif is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = said("Stalled")
else
  hs.status = "Progressing"
  if found["Progressing"] ~= nil then
    hs.message = said("Progressing")
  else
    hs.message = "Waiting for the job to start"
  end
end
return hs
