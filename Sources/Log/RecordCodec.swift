// RecordCodec: the compact binary body of a stored record, and its checksum.
//
// Body (version 1), all integers little-endian or LEB128 varints:
//   varint n, then n × (u8 nameLength, name bytes, u8 tag, payload) sorted by name
//     tag 0: Double, 8 bytes (IEEE bit pattern)
//     tag 1: integral Double in ±2^53, zigzag varint (most readings are small integers)
//     tag 2: text, varint length, UTF-8 bytes
//   varint m, then m × (u8 nameLength, name bytes)   -- missing sensors
// Every record row also stores CRC-32 (IEEE) over seq, timestamp, flag and body, checked on
// every read, so damage that SQLite itself cannot see is reported, never passed on.
import FieldlogCore

enum RecordCodec {
    static func encode(_ values: SensorValues, missing: [String]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16 + values.count * 16)
        putVarint(UInt64(values.count), &out)
        // Sorted by name, in place (`SensorValues.sorted` builds two arrays per reading).
        var entries = Array(values.values)
        entries.sort { $0.key < $1.key }
        for (name, value) in entries {
            putName(name, &out)
            switch value {
            case .number(let d):
                if d == d.rounded(.towardZero), abs(d) <= 9_007_199_254_740_992, !(d == 0 && d.sign == .minus) {
                    out.append(1)
                    let i = Int64(d)
                    putVarint(UInt64(bitPattern: (i << 1) ^ (i >> 63)), &out)
                } else {
                    out.append(0)
                    withUnsafeBytes(of: d.bitPattern.littleEndian) { out.append(contentsOf: $0) }
                }
            case .text(let s):
                out.append(2)
                putVarint(UInt64(s.utf8.count), &out)
                out.append(contentsOf: s.utf8)
            }
        }
        putVarint(UInt64(missing.count), &out)
        for name in missing { putName(name, &out) }
        return out
    }

    struct DecodeError: Error, CustomStringConvertible {
        let description: String
    }

    static func decode(_ bytes: [UInt8]) throws -> (SensorValues, [String]) {
        var r = Reader(bytes: bytes)
        let n = try r.varint()
        guard n <= UInt64(SensorValues.maxSensors) else { throw DecodeError(description: "record body claims \(n) values") }
        var values: [String: SensorValue] = [:]
        for _ in 0..<n {
            let name = try r.name()
            switch try r.byte() {
            case 0: values[name] = .number(Double(bitPattern: UInt64(littleEndian: try r.fixed64())))
            case 1:
                let z = try r.varint()
                values[name] = .number(Double(Int64(bitPattern: z >> 1) ^ -Int64(bitPattern: z & 1)))
            case 2:
                let length = try r.varint()
                guard length <= UInt64(SensorValues.maxTextBytes) else { throw DecodeError(description: "text value of \(name) is \(length) bytes") }
                values[name] = .text(try r.string(Int(length)))
            case let tag: throw DecodeError(description: "unknown value tag \(tag) for \(name)")
            }
        }
        let m = try r.varint()
        guard m <= 4096 else { throw DecodeError(description: "record body claims \(m) missing sensors") }
        var missing: [String] = []
        for _ in 0..<m { missing.append(try r.name()) }
        guard r.offset == bytes.count else { throw DecodeError(description: "\(bytes.count - r.offset) trailing bytes in record body") }
        return (try SensorValues(values), missing)
    }

    /// u8 length, then the UTF-8 bytes (names are validated: 1…64 bytes).
    private static func putName(_ name: String, _ out: inout [UInt8]) {
        var name = name
        name.withUTF8 { bytes in
            out.append(UInt8(bytes.count))
            out.append(contentsOf: bytes)
        }
    }

    @inline(__always)
    private static func putVarint(_ value: UInt64, _ out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func byte() throws -> UInt8 {
            guard offset < bytes.count else { throw DecodeError(description: "record body ends early at byte \(offset)") }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func varint() throws -> UInt64 {
            var result: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                let b = try byte()
                guard shift < 64 else { throw DecodeError(description: "varint too long at byte \(offset)") }
                result |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return result }
                shift += 7
            }
        }

        mutating func fixed64() throws -> UInt64 {
            guard offset + 8 <= bytes.count else { throw DecodeError(description: "record body ends early at byte \(offset)") }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
            offset += 8
            return v
        }

        mutating func string(_ length: Int) throws -> String {
            guard offset + length <= bytes.count else { throw DecodeError(description: "record body ends early at byte \(offset)") }
            defer { offset += length }
            guard let s = String(validating: bytes[offset..<offset + length], as: UTF8.self) else {
                throw DecodeError(description: "invalid UTF-8 at byte \(offset)")
            }
            return s
        }

        mutating func name() throws -> String {
            let length = Int(try byte())
            guard length >= 1 else { throw DecodeError(description: "empty sensor name at byte \(offset)") }
            return try string(length)
        }
    }

    /// CRC-32 (IEEE 802.3) of a record's identity and body: over seq and timestamp (8 bytes
    /// each, little-endian), the unsynced flag (1 byte), then the body.
    ///
    /// Slicing-by-8 (eight 256-entry tables, eight bytes per step): the byte-at-a-time loop was
    /// 12 % of the CPU of 64 appenders at `normal` durability (docs/benchmarks.md).
    static func checksum(seq: Int64, timestampMs: Int64, unsynced: Bool, body: [UInt8]) -> UInt32 {
        tables.withUnsafeBufferPointer { t in
            var crc: UInt32 = 0xFFFF_FFFF
            crc = step8(crc, UInt64(bitPattern: seq), t)
            crc = step8(crc, UInt64(bitPattern: timestampMs), t)
            crc = t[Int((crc ^ (unsynced ? 1 : 0)) & 0xFF)] ^ (crc >> 8)
            body.withUnsafeBytes { bytes in
                var i = 0
                while i + 8 <= bytes.count {
                    crc = step8(crc, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)), t)
                    i += 8
                }
                while i < bytes.count {
                    crc = t[Int((crc ^ UInt32(bytes[i])) & 0xFF)] ^ (crc >> 8)
                    i += 1
                }
            }
            return crc ^ 0xFFFF_FFFF
        }
    }

    /// Feeds the eight bytes of `word`, least significant first.
    @inline(__always)
    private static func step8(_ crc: UInt32, _ word: UInt64, _ t: UnsafeBufferPointer<UInt32>) -> UInt32 {
        let one = UInt32(truncatingIfNeeded: word) ^ crc
        let two = UInt32(truncatingIfNeeded: word >> 32)
        return t[7 * 256 + Int(one & 0xFF)] ^ t[6 * 256 + Int((one >> 8) & 0xFF)]
            ^ t[5 * 256 + Int((one >> 16) & 0xFF)] ^ t[4 * 256 + Int(one >> 24)]
            ^ t[3 * 256 + Int(two & 0xFF)] ^ t[2 * 256 + Int((two >> 8) & 0xFF)]
            ^ t[1 * 256 + Int((two >> 16) & 0xFF)] ^ t[Int(two >> 24)]
    }

    /// Table k maps a byte to its CRC contribution k bytes further on (table 0: the classic table).
    private static let tables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 { t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[Int(t[(k - 1) * 256 + i] & 0xFF)] }
        }
        return t
    }()
}

/// Test and benchmark access to the record encoding (not an API for product code).
@_spi(Testing) public enum RecordEncoding {
    /// The stored body of a reading.
    public static func body(_ values: SensorValues, missing: [String] = []) -> [UInt8] { RecordCodec.encode(values, missing: missing) }
    /// The stored checksum of a record.
    public static func checksum(seq: Int64, timestampMs: Int64, unsynced: Bool, body: [UInt8]) -> UInt32 {
        RecordCodec.checksum(seq: seq, timestampMs: timestampMs, unsynced: unsynced, body: body)
    }
}
