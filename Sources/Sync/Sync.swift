// Sync: the sync protocol of spec/protocol.md.
//
//   Messages/       Batch, Ack, Status, Command, CommandResponse (plain values)
//   Codec/          strict JSON reader/writer and SyncCodec (encode / decode with dead-letter reasons)
//   Topics.swift    configurable topic templates (defaults and the seed's names)
//   StateMachines/  SenderStateMachine (device) and IngestStateMachine (backend), sans-IO
//   Ingest/         what the backend makes of a message: validation (IngestItems), the ack
//                   rule, the rows a transaction writes and their columns (StoreRows), seed
//                   value lists (LegacyValues)
//
// Nothing here does IO. The MQTT shells that drive these machines are the device's
// `SyncAgent` (Sources/Device/Sync) and the backend's `IngestService`/`IngestWriter`
// (Sources/BackendNode); spec/protocol.md §7.
