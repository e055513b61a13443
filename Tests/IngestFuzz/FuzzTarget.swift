// libFuzzer target for the whole ingest path; built and run by scripts/fuzz-ingest (not a
// SwiftPM target). From (topic, payload bytes) through validation and Sync's
// IngestStateMachine to the rows it would write: no input may trap, every message must end
// stored or as a dead letter with a reason, every row must fit its column, and no ack may
// pass what the (simulated) store holds. Every payload also goes through every decoder with
// the codec's round-trip checks (SyncFuzzEntry, the target of scripts/fuzz-codec).
//
// Input: a sequence of messages, each [selector: 1 byte][length: 2 bytes, big endian][payload].
// selector & 7 picks the topic (0 batch, 1 status, 2 response, 3 seed values of dev-1,
// 4 a topic no template matches, 5 batch of dev-2, 6 a batch topic with an invalid device id,
// 7 batch of dev-1 announced with the compact encoding's content type, spec §2.3; the others
// carry no content type, so the payload alone decides between JSON and compact);
// bit 3 makes the next transaction fail as refused, bit 4 as a lost connection, bit 5 as a
// conflict, bit 6 makes the progress read lag (miss the last commit).
import FieldlogCore
import Sync

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    IngestFuzz.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

enum IngestFuzz {
    static let topics = TopicTemplates.defaults
    static let dev1 = try! DeviceID("dev-1"), dev2 = try! DeviceID("dev-2")

    static func topic(_ selector: UInt8) -> String {
        switch selector & 7 {
        case 0: return topics.batch.topic(device: dev1)
        case 1: return topics.status.topic(device: dev1)
        case 2: return topics.response.topic(device: dev1)
        case 3: return topics.legacyValues.topic(device: dev1)
        case 4: return "somewhere/else/\(selector)"
        case 5: return topics.batch.topic(device: dev2)
        case 6: return "fieldlog/v1/devices/bad+id/batch"
        default: return topics.batch.topic(device: dev1)
        }
    }

    static func contentType(_ selector: UInt8) -> String? { selector & 7 == 7 ? CompactBatchCodec.contentType : nil }

    static func run(_ bytes: [UInt8]) {
        var c = IngestConfiguration()
        c.maxMessagesPerTransaction = 4
        c.conflictRetries = 2
        c.unknownErrorAttempts = 1
        var machine = IngestStateMachine<ContinuousClock.Instant>(configuration: c)
        let t0 = ContinuousClock.now
        var now = t0
        var committed: [EpochKey: [SequenceRange]] = [:]
        var history: [[EpochKey: [SequenceRange]]] = [[:]]
        var pendingWrite: IngestTransaction?
        var pendingRead: (TransactionID, [IngestStateMachine<ContinuousClock.Instant>.ProgressQuery])?
        var timer: ContinuousClock.Instant?
        var failNext: StoreFailure?
        var lagNext = false
        var sent = 0, accounted = 0, dropped = 0

        func perform(_ actions: [IngestStateMachine<ContinuousClock.Instant>.Action]) {
            for a in actions {
                switch a {
                case .write(let tx):
                    precondition(pendingWrite == nil && pendingRead == nil, "two transactions at once")
                    let violations = StoreRows(tx).violations()
                    precondition(violations.isEmpty, "rows that do not fit their columns: \(violations)")
                    for d in tx.deadLetters { precondition(!d.message.isEmpty, "a dead letter without a reason") }
                    pendingWrite = tx
                case .readProgress(let id, let q): pendingRead = (id, q)
                case .armTimer(let at): timer = at
                case .publishAcks(let acks):
                    for a in acks {
                        // The ack never passes what the store holds for that log.
                        let key = EpochKey(device: a.ack.device, epoch: a.ack.epoch)
                        precondition(a.ack.through <= AckRule.storedThrough(checkpoint: .zero, ranges: committed[key] ?? []),
                                     "ack through \(a.ack.through) passes the store")
                    }
                case .dropped: dropped += 1
                case .abandoned: accounted += 1
                case .committed, .retrying, .isolating, .notAcked, .pauseReading, .resumeReading, .reconnectDatabase, .compact: break
                }
            }
        }

        func step() {
            if let tx = pendingWrite {
                pendingWrite = nil
                if let f = failNext {
                    failNext = nil
                    perform(machine.transactionFailed(tx.id, failure: f, now: now))
                    return
                }
                for b in tx.batches { committed[EpochKey(device: b.device, epoch: b.epoch), default: []].append(b.range) }
                history.append(committed)
                accounted += tx.batches.count + tx.statuses.count + tx.responses.count + tx.legacy.count
                    + tx.deadLetters.filter { $0.reason != .rejectedRecord }.count
                perform(machine.transactionCommitted(tx.id, result: WriteResult(readingsInserted: tx.recordCount, legacyInserted: tx.legacyReadingCount), now: now))
            } else if let (id, queries) = pendingRead {
                pendingRead = nil
                let view = lagNext ? history[max(0, history.count - 2)] : committed
                lagNext = false
                perform(machine.progressRead(id, ranges: queries.map { q in (view[q.key] ?? []).filter { $0.last > q.above } },
                                             nowUnixMilliseconds: 1_700_000_000_000, now: now))
            } else if let t = timer {
                timer = nil
                now = t
                perform(machine.timerFired(now: now))
            }
        }

        var i = 0
        while i + 3 <= bytes.count {
            let selector = bytes[i]
            let length = Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            let end = min(bytes.count, i + 3 + length)
            let payload = Array(bytes[(i + 3)..<end])
            i = end
            if selector & 8 != 0 { failNext = .refused("fuzz: refused") }
            if selector & 16 != 0 { failNext = .connection("fuzz: connection") }
            if selector & 32 != 0 { failNext = .conflict("fuzz: conflict") }
            if selector & 64 != 0 { lagNext = true }
            // The codec's own checks (every decoder; what is accepted round-trips) on every payload.
            SyncFuzzEntry.decodeAll(payload)
            sent += 1
            perform(machine.messageReceived(topic: topic(selector), payload: payload, contentType: contentType(selector), now: now))
            if selector & 128 != 0 { step() }
        }
        var guardSteps = 0
        while !machine.isIdle || pendingWrite != nil || pendingRead != nil {
            guardSteps += 1
            precondition(guardSteps < 100_000, "the machine does not settle")
            precondition(pendingWrite != nil || pendingRead != nil || timer != nil, "stuck with work and nothing to do")
            step()
        }
        // Every message is accounted for: stored (as data, status, response or seed values), a
        // dead letter with a reason (possibly after isolation), reported abandoned, or dropped
        // unacked (a device over its share; it resends).
        precondition(accounted + dropped == sent, "\(sent) messages sent, \(accounted) accounted for, \(dropped) dropped")
    }
}
