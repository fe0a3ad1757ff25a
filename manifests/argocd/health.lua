-- Argo CD health of ImageModel and RecognitionPipeline (docs/status.md). It reads only
-- what the operator wrote: Ready and Progressing, and whether they describe the current
-- generation. Healthy: the current spec's revision serves all traffic. Degraded: a
-- rollout failed, the spec is invalid, or the operator cannot apply it. Progressing:
-- anything still moving.
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
