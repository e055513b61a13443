// The decoder entry point shared by the libFuzzer targets (scripts/fuzz-codec, scripts/fuzz-ingest)
// and the corruption tests: feed arbitrary bytes to every decoder; anything accepted must
// survive an encode/decode round trip unchanged. A trap here is a bug.
//
// Test code, compiled only into tests: this file is part of SyncTests, and the fuzz scripts
// compile it into their targets next to Tests/SyncFuzz/FuzzTarget.swift (or
// Tests/IngestFuzz/FuzzTarget.swift), against a Sync built with -enable-testing.
//
// The compact batch decoder (§3.7) gets the bytes twice: as they are (a payload, which must
// start with "FLC" and usually carries zlib data) and wrapped as a stored body, so mutations
// reach the body parser without having to find a valid zlib stream. Every body the parser
// accepts is also checked against the JSON decoder: the same content written as JSON must
// give the same batch (rejected records included) or the same dead-letter class (§3.1: the
// two decoders apply the same limits).

import FieldlogCore
@testable import Sync

/// Fuzzing harness entry.
enum SyncFuzzEntry {
    static func decodeAll(_ bytes: [UInt8]) {
        let device = try! DeviceID("dev-1")
        if let b = try? SyncCodec.decodeBatch(bytes), b.rejected.isEmpty {
            let again = try? SyncCodec.decodeBatch(SyncCodec.encode(b), expectedDevice: device == b.device ? device : nil)
            precondition(again == b, "batch round trip changed \(b) into \(String(describing: again))")
            checkCompactRoundTrip(b)
        }
        if let b = try? CompactBatchCodec.decode(bytes), b.rejected.isEmpty {
            checkCompactRoundTrip(b)
        }
        checkCompactBody(bytes)
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

    /// A valid batch survives the compact encoding unchanged, and so does it through JSON.
    static func checkCompactRoundTrip(_ b: Batch) {
        let compact = CompactBatchCodec.encode(b)
        let again = try? SyncCodec.decodeAnyBatch(compact, contentType: CompactBatchCodec.contentType)
        precondition(again == b, "compact round trip changed \(b) into \(String(describing: again))")
        precondition((try? SyncCodec.decodeBatch(SyncCodec.encode(b))) == b, "a batch the compact decoder accepted does not survive JSON: \(b)")
    }

    /// `bytes` as a stored compact body: decoded, and compared with the JSON decoder.
    static func checkCompactBody(_ bytes: [UInt8]) {
        let payload = CompactBatchCodec.storedPayload(body: bytes)
        let result = Result { () throws(SyncDecodingError) in try CompactBatchCodec.decode(payload) }
        guard let content = try? CompactBatchCodec.Content(body: bytes) else {
            if case .failure(let e) = result {
                precondition(e.reason == .malformedCompact, "an unreadable body refused as \(e.reason) instead of malformed-compact")
            } else {
                preconditionFailure("the decoder accepted a body the parser refuses")
            }
            return
        }
        if case .success(let b) = result, b.rejected.isEmpty { checkCompactRoundTrip(b) }
        guard let json = content.jsonIfExpressible else { return }  // non-finite numbers: JSON has none
        let viaJSON = Result { () throws(SyncDecodingError) in try SyncCodec.decodeBatch(json, maxBytes: .max) }
        switch (result, viaJSON) {
        case (.success(let a), .success(let b)):
            precondition(a == b, "compact and JSON decoders disagree on the same content: \(a) vs \(b)")
        case (.failure(let a), .failure(let b)):
            precondition(a.reason == b.reason, "compact refuses as \(a) but JSON as \(b)")
        case (.success(let a), .failure(let b)):
            preconditionFailure("compact accepts \(a) but JSON refuses the same content: \(b)")
        case (.failure(let a), .success(let b)):
            preconditionFailure("JSON accepts \(b) but compact refuses the same content: \(a)")
        }
    }
}

extension CompactBatchCodec {
    /// `body` behind a compact header, stored (no compression): for the fuzzer and tests.
    static func storedPayload(body: [UInt8]) -> [UInt8] {
        var w = CompactWriter(reservingCapacity: body.count + 16)
        for b in magic { w.byte(b) }
        w.byte(formatVersion)
        w.byte(Method.stored.rawValue)
        w.unsigned(body.count)
        return w.bytes + body
    }
}

extension CompactBatchCodec.Content {
    /// The content as JSON text, unless a number is not finite (which JSON cannot write).
    var jsonIfExpressible: [UInt8]? {
        for r in records {
            for v in r.values { if case .number(let d) = v.value, !d.isFinite { return nil } }
        }
        return JSONWriter.encode(json)
    }
}
