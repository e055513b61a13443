// The byte level of the compact batch encoding (spec/protocol.md §3.7): LEB128 varints,
// zigzag signed integers, length-prefixed UTF-8 strings, bitmaps, and zlib.
//
// The reader is total: every read checks what is left and throws `CompactFormatError` (the
// byte offset and what was wrong) instead of trapping, so hostile bytes can only ever give
// an error. Varints must be canonical (no padding groups, at most 10 bytes, no bits beyond
// 64) and bitmaps' unused bits zero, so one value has one encoding and a bit flip anywhere
// is more likely to be caught.

import CZlib

/// Why compact bytes could not be read; becomes a `malformed-compact` dead letter.
struct CompactFormatError: Error, Hashable, Sendable {
    var offset: Int
    var message: String
}

/// Writes the compact encoding's primitives.
struct CompactWriter {
    private(set) var bytes: [UInt8] = []

    init(reservingCapacity n: Int) { bytes.reserveCapacity(n) }

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    mutating func unsigned(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func unsigned(_ value: Int) {
        precondition(value >= 0, "a count is never negative")
        unsigned(UInt64(value))
    }

    /// Zigzag: 0, −1, 1, −2, … → 0, 1, 2, 3, … so small magnitudes of either sign stay short.
    mutating func signed(_ value: Int64) { unsigned(CompactWriter.zigzag(value)) }

    static func zigzag(_ v: Int64) -> UInt64 { UInt64(bitPattern: (v << 1) ^ (v >> 63)) }

    /// Bytes of `unsigned(v)`.
    static func unsignedSize(_ v: UInt64) -> Int { v == 0 ? 1 : (64 - v.leadingZeroBitCount + 6) / 7 }

    mutating func fixed64(_ v: UInt64) {
        for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(k)))) }
    }

    mutating func string(_ s: String) {
        unsigned(s.utf8.count)
        bytes.append(contentsOf: s.utf8)
    }

    /// `bits.count` bits, least significant bit first, the last byte's unused bits zero.
    mutating func bitmap(_ bits: [Bool]) {
        var b: UInt8 = 0
        for (k, bit) in bits.enumerated() {
            if bit { b |= 1 << UInt8(k & 7) }
            if k & 7 == 7 { bytes.append(b); b = 0 }
        }
        if bits.count & 7 != 0 { bytes.append(b) }
    }
}

/// Reads the compact encoding's primitives from a byte array; every read is checked.
struct CompactReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = min(max(offset, 0), bytes.count)
    }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    func error(_ message: String) -> CompactFormatError { CompactFormatError(offset: offset, message: message) }

    mutating func byte(_ what: @autoclosure () -> String) throws(CompactFormatError) -> UInt8 {
        guard offset < bytes.count else { throw error("truncated: \(what()) is missing") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func unsigned(_ what: @autoclosure () -> String) throws(CompactFormatError) -> UInt64 {
        let start = offset
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw error("truncated: \(what()) (a varint) is cut off") }
            let b = bytes[offset]
            offset += 1
            // The 10th byte may only carry the 64th bit.
            guard shift < 63 || b <= 1 else {
                offset = start
                throw error("\(what()) is a varint longer than 64 bits")
            }
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 {
                guard b != 0 || shift == 0 else {
                    offset = start
                    throw error("\(what()) is a varint with a redundant zero group (not canonical)")
                }
                return result
            }
            shift += 7
        }
    }

    mutating func signed(_ what: @autoclosure () -> String) throws(CompactFormatError) -> Int64 {
        let z = try unsigned(what())
        return Int64(bitPattern: z >> 1) ^ -Int64(bitPattern: z & 1)
    }

    /// A count that must be at most `max` and fit in what is left at `minBytesEach` bytes per
    /// item (so no hostile count makes the decoder allocate more than the input can describe).
    mutating func count(_ what: @autoclosure () -> String, max: Int, minBytesEach: Int) throws(CompactFormatError) -> Int {
        let start = offset
        let n = try unsigned(what())
        guard n <= UInt64(max) else {
            offset = start
            throw error("\(what()) is \(n); at most \(max) allowed")
        }
        guard n * UInt64(minBytesEach) <= UInt64(remaining) else {
            offset = start
            throw error("truncated: \(what()) is \(n) but only \(remaining) bytes are left")
        }
        return Int(n)
    }

    mutating func fixed64(_ what: @autoclosure () -> String) throws(CompactFormatError) -> UInt64 {
        guard remaining >= 8 else { throw error("truncated: \(what()) needs 8 bytes, \(remaining) left") }
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(bytes[offset + k]) << (8 * UInt64(k)) }
        offset += 8
        return v
    }

    /// A length-prefixed string of valid UTF-8 (what JSON's strings are, so both encodings
    /// carry the same texts), at most `maxBytes` long.
    mutating func string(_ what: @autoclosure () -> String, maxBytes: Int = ProtocolLimits.maxMessageBytes) throws(CompactFormatError) -> String {
        let start = offset
        let n = try unsigned(what())
        guard n <= UInt64(remaining) else {
            offset = start
            throw error("truncated: \(what()) is \(n) bytes but only \(remaining) are left")
        }
        guard n <= UInt64(maxBytes) else {
            offset = start
            throw error("\(what()) is \(n) bytes; at most \(maxBytes) allowed")
        }
        let end = offset + Int(n)
        guard let s = String(validating: bytes[offset..<end], as: UTF8.self) else {
            offset = start
            throw error("\(what()) is not valid UTF-8")
        }
        offset = end
        return s
    }

    /// `bits` bits (least significant first) as a Bool array; the last byte's unused bits must be 0.
    mutating func bitmap(_ what: @autoclosure () -> String, bits: Int) throws(CompactFormatError) -> [Bool] {
        let n = (bits + 7) / 8
        guard remaining >= n else { throw error("truncated: \(what()) needs \(n) bytes, \(remaining) left") }
        var out = [Bool](repeating: false, count: bits)
        for k in 0..<bits where bytes[offset + (k >> 3)] & (1 << UInt8(k & 7)) != 0 { out[k] = true }
        if bits & 7 != 0, bytes[offset + n - 1] >> UInt8(bits & 7) != 0 {
            throw error("\(what()) has bits set beyond its \(bits) entries")
        }
        offset += n
        return out
    }
}

/// zlib (RFC 1950: deflate with an Adler-32 check) through its one-shot calls.
enum Zlib {
    /// The compressed form of `bytes`, or nil when zlib fails (only for lack of memory): the
    /// caller then sends the bytes stored.
    static func compress(_ bytes: [UInt8], level: Int32) -> [UInt8]? {
        var capacity = compressBound(UInt(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(capacity))
        let rc = out.withUnsafeMutableBufferPointer { o in
            bytes.withUnsafeBufferPointer { i in compress2(o.baseAddress, &capacity, i.baseAddress, UInt(i.count), level) }
        }
        guard rc == Z_OK else { return nil }
        out.removeLast(out.count - Int(capacity))
        return out
    }

    /// Inflates `input`, which must be exactly one zlib stream, into exactly `size` bytes.
    /// The output buffer is `size + 1` bytes: inflating stops there, so a stream that would
    /// inflate to more (a decompression bomb) costs at most that much memory and work.
    static func decompress(_ input: ArraySlice<UInt8>, size: Int) throws(CompactFormatError) -> [UInt8] {
        guard !input.isEmpty else { throw CompactFormatError(offset: input.startIndex, message: "the zlib stream is empty") }
        var out = [UInt8](repeating: 0, count: size + 1)
        var outLength = UInt(out.count)
        var inLength = UInt(input.count)
        let rc = out.withUnsafeMutableBufferPointer { o in
            input.withUnsafeBufferPointer { i in uncompress2(o.baseAddress, &outLength, i.baseAddress, &inLength) }
        }
        switch rc {
        case Z_OK:
            guard Int(outLength) == size else {
                throw CompactFormatError(offset: input.startIndex, message: "the zlib stream inflates to \(outLength) bytes, not the \(size) its header declares")
            }
            guard Int(inLength) == input.count else {
                throw CompactFormatError(offset: input.startIndex + Int(inLength), message: "\(input.count - Int(inLength)) bytes after the end of the zlib stream")
            }
            out.removeLast()
            return out
        case Z_BUF_ERROR:
            throw CompactFormatError(offset: input.startIndex, message: "the zlib stream inflates to more than the \(size) bytes its header declares")
        case Z_MEM_ERROR:
            throw CompactFormatError(offset: input.startIndex, message: "zlib ran out of memory inflating \(size) bytes")
        default:
            throw CompactFormatError(offset: input.startIndex, message: "corrupt or truncated zlib stream (zlib error \(rc))")
        }
    }
}
