// The decoder entry point shared by the libFuzzer target (scripts/fuzz-codec) and the
// corruption tests: feed arbitrary bytes to every decoder; anything accepted must survive
// an encode/decode round trip unchanged. A trap here is a bug.

import FieldlogCore

/// Fuzzing harness entry (public so the out-of-package fuzz target can call it).
public enum SyncFuzzEntry {
    public static func decodeAll(_ bytes: [UInt8]) {
        let device = try! DeviceID("dev-1")
        if let b = try? SyncCodec.decodeBatch(bytes), b.rejected.isEmpty {
            let again = try? SyncCodec.decodeBatch(SyncCodec.encode(b), expectedDevice: device == b.device ? device : nil)
            precondition(again == b, "batch round trip changed \(b) into \(String(describing: again))")
        }
        if let a = try? SyncCodec.decodeAck(bytes) {
            precondition((try? SyncCodec.decodeAck(SyncCodec.encode(a))) == a, "ack round trip changed \(a)")
        }
        if let s = try? SyncCodec.decodeStatus(bytes) {
            precondition((try? SyncCodec.decodeStatus(SyncCodec.encode(s))) == s, "status round trip changed \(s)")
        }
        if let c = try? SyncCodec.decodeCommand(bytes) {
            precondition((try? SyncCodec.decodeCommand(SyncCodec.encode(c))) == c, "command round trip changed \(c)")
        }
        if let r = try? SyncCodec.decodeCommandResponse(bytes) {
            precondition((try? SyncCodec.decodeCommandResponse(SyncCodec.encode(r))) == r, "response round trip changed \(r)")
        }
        _ = try? JSONReader.parse(bytes)
    }
}
