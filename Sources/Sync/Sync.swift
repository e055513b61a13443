// Sync: the sync protocol of spec/protocol.md.
//
//   Messages/       Batch, Ack, Status, Command, CommandResponse (plain values)
//   Codec/          strict JSON reader/writer and SyncCodec (encode / decode with dead-letter reasons)
//   Topics.swift    configurable topic templates (defaults and the seed's names)
//   StateMachines/  SenderStateMachine (device) and ReceiverStateMachine (backend), sans-IO
