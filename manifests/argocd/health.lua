-- Argo CD health of ImageModel, RecognitionPipeline and RecognitionJob (docs/status.md).
-- It reads only what the operator wrote, and whether it describes the current generation.
-- ImageModel and RecognitionPipeline, from Ready and Progressing: Healthy when the current
-- spec's revision serves all traffic; Degraded when a rollout failed, the spec is invalid,
-- or the operator cannot apply it; Progressing while anything still moves. RecognitionJob:
-- Healthy once Complete; Degraded when Failed or Stalled (a shard failed for good, the
-- model is missing, the spec is invalid); Progressing while shards run or wait (the
-- message names a pod waiting on the scheduler or an image).
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
if obj.kind == "RecognitionJob" then
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
end
local ready = nil
local progressing = nil
for _, c in ipairs(status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Progressing" then progressing = c end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
local failed = {
  InvalidSpec = true, ApplyFailed = true, ConflictingObject = true, RolloutFailed = true,
  RolledBack = true,
  SecretNotFound = true, ModelNotFound = true, GatewayAPIMissing = true, NotAccepted = true,
}
if ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
elseif failed[ready.reason] or (progressing ~= nil and progressing.status == "False") then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = ready.reason .. ": " .. (ready.message or "")
return hs
