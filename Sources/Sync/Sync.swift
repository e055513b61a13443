// Sync: the sync protocol of spec/protocol.md.
//
//   Messages/       Batch, Ack, Status, Command, CommandResponse (plain values)
//   Codec/          strict JSON reader/writer; SyncCodec, the JSON encoding, whose decoder is
//                   layered: wire (JSONFields), protocol values (ProtocolFields), messages
//                   (MessageDecoding), commands (CommandDecoding); the compact batch encoding
//                   (CompactBatch, CompactWire); the dead-letter reasons (DecodingErrors)
//   Topics.swift    configurable topic templates (defaults and the seed's names)
//   StateMachines/  DeviceSyncStateMachine and the SenderStateMachine it owns (device) and
//                   IngestStateMachine (backend), sans-IO
//   Ingest/         what the backend makes of a message: validation (IngestItems), the ack
//                   rule, the rows a transaction writes and their columns (StoreRows), seed
//                   value lists (LegacyValues)
//
// Nothing here does IO. The MQTT shells that drive these machines are the device's
// `SyncAgent` (Sources/Device/Sync) and the backend's `IngestService`/`IngestWriter`
// (Sources/Ingest); spec/protocol.md §7.
