// Device: the components of `fieldlog-device` (sampler, button, sync agent, commands, status server).
