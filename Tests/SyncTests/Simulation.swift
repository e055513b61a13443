import FieldlogCore
@testable import Sync
import TestSupport

// A deterministic simulation of the whole protocol (spec/protocol.md §8), in the manner of
// TigerBeetle's VOPR: one seed drives a device (durable log + the shipped
// DeviceSyncStateMachine: the connected rule, subscriptions that may fail, the sender switch,
// replay commands resolved from optional bounds, around SenderStateMachine), a broker
// that loses, duplicates, delays and reorders messages, keeps a retained ack and drops
// connections, two ingest processes on a shared subscription (the shipped IngestStateMachine,
// driven exactly as its shell drives it), an idempotent store that fails like MariaDB does
// (lost connections, certification aborts, values it refuses, progress reads that lag even
// the reader's own commit), a second, hostile device that sends garbage and boundary values
// on its own topics, and crashes/restarts of device and receivers, all on virtual time.
// Invariants are checked after every step (safety phase); then faults stop and the run must
// converge (liveness phase). Broken variants show that the harness catches the bugs it is
// meant to catch.

/// Virtual time for the state machines.
struct VirtualInstant: InstantProtocol, CustomStringConvertible {
    var nanoseconds: Int64
    static let zero = VirtualInstant(nanoseconds: 0)
    func advanced(by d: Duration) -> VirtualInstant {
        VirtualInstant(nanoseconds: nanoseconds + d.inNanoseconds)
    }
    func duration(to other: VirtualInstant) -> Duration { .nanoseconds(other.nanoseconds - nanoseconds) }
    static func < (a: Self, b: Self) -> Bool { a.nanoseconds < b.nanoseconds }
    var description: String { "t=\(nanoseconds / 1_000_000)ms" }
}

/// Deliberately broken drivers the harness must catch.
enum SimulationVariant: String, CaseIterable {
    case correct
    /// Receiver acks a batch as soon as it arrives, before the store commits.
    case ackBeforeStore
    /// Receiver acks through the batch's last number instead of the contiguous stored prefix.
    case ackBatchMax
    /// Device marks a batch acknowledged (and trims it) when it publishes it (the seed's bug).
    case trimUnacked
    /// Store inserts without de-duplication.
    case nonIdempotentStore
    /// D1: the shell treats a value the database refuses as a lost connection and retries it
    /// for ever (the old `RetryPolicy`): one bad message stalls the ingest for every device.
    case refusalsRetriedForEver
    /// D2: the ack rule of before, whose `through.next` trapped once a declared range reached
    /// 2^53; checked side by side on the inputs the shipped rule gets (a trap would end the run).
    case trappingAckRule
    /// D3: device lag as `now − ts` on whatever integer a record carried (the old codec took
    /// any Int64); checked side by side on every batch the hostile device sends.
    case uncheckedTimestampArithmetic
}

struct SimulationFailure: Error, CustomStringConvertible {
    var seed: UInt64
    var step: Int
    var message: String
    var description: String { "seed \(seed) failed at step \(step): \(message)" }
}

final class Simulation {
    typealias Sender = SenderStateMachine<VirtualInstant>
    typealias Session = DeviceSyncStateMachine<VirtualInstant>

    let seed: UInt64
    /// How the device encodes its batches (from the seed's parity).
    let encoding: BatchEncoding
    let variant: SimulationVariant
    var rng: SplitMix64
    var now = VirtualInstant.zero
    var step = 0
    let verbose: Bool
    var trace: [String] = []

    let device = try! DeviceID("sim-dev")
    let epoch: Epoch
    let topics = TopicTemplates.defaults
    let batchTopic: String
    let recordTarget: Int

    // Device: durable log state.
    var retained: [UInt64: LogRecord] = [:]
    var logLosses: [LossMarker] = []
    var head = SequenceNumber.zero
    var persistedAcked = SequenceNumber.zero
    var retainedFrom = SequenceNumber(1)
    var truth: [UInt64: LogRecord] = [:]
    // Device: volatile.
    var session: Session
    var sender: Sender { session.sender }
    var deviceConnected = false
    var senderEnabled = true
    var pendingLoad: (from: SequenceNumber, through: SequenceNumber, limit: Int)?
    var pendingSubscribe: Int?
    var subscribed = false
    var timerAt: VirtualInstant?
    var subscribeRetryAt: VirtualInstant?
    var nextTicket: UInt64 = 0
    var openTickets = Set<UInt64>()
    /// When the liveness phase began, and the longest it took to converge.
    var livenessStart = VirtualInstant.zero

    // Broker.
    var toReceivers: [(topic: String, payload: [UInt8])] = []
    var toDevice: [[UInt8]] = []
    var retainedAck: [UInt8]?

    // Receivers: the shipped ingest state machine, and what its shell would be doing.
    typealias Ingest = IngestStateMachine<VirtualInstant>
    static let ingestConfiguration: IngestConfiguration = {
        var c = IngestConfiguration()
        c.maxMessagesPerTransaction = 6
        c.conflictRetries = 3
        c.unknownErrorAttempts = 2
        c.compactEveryBatches = 4
        return c
    }()
    struct ReceiverSim {
        var machine = Ingest(configuration: Simulation.ingestConfiguration)
        var up = true
        var pendingWrite: IngestTransaction?
        var pendingRead: (TransactionID, [Ingest.ProgressQuery])?
        var timerAt: VirtualInstant?
        var pendingAcks: [[UInt8]] = []
    }
    var receivers = [ReceiverSim(), ReceiverSim()]
    let evil = try! DeviceID("sim-evil")
    var hostileSent = 0

    // Store.
    var rowCount: [UInt64: Int] = [:]
    var storedLoss = Set<UInt64>()
    var storedRejected = Set<UInt64>()
    var storePrefix = SequenceNumber.zero
    var prefixHistory: [SequenceNumber] = [.zero]
    /// Every committed batch range of every (device, epoch), as the progress read sees them,
    /// and earlier snapshots of them (a lagging reader).
    var committedRanges: [EpochKey: [SequenceRange]] = [:]
    var rangeHistory: [[EpochKey: [SequenceRange]]] = [[:]]
    var deadLetterRows = 0
    var faults = true

    /// What a run exercised, summed over seeds to show the faults really happen.
    struct Stats {
        var resends = 0, replays = 0, notRetainedMarkers = 0, diskQuotaDrops = 0, deviceCrashes = 0
        var receiverCrashes = 0, staleThroughs = 0, drops = 0, duplicates = 0, rejected = 0
        var subscribeFailures = 0, senderPauses = 0, replaysRefused = 0
        /// Longest virtual time from the end of faults to convergence (milliseconds).
        var convergeMsMax: Int64 = 0
        var connectionFailures = 0, conflicts = 0, refusals = 0, isolations = 0, notAcked = 0, hostile = 0, deadLetters = 0
        var compactBatches = 0
        mutating func add(_ o: Stats) {
            compactBatches += o.compactBatches
            subscribeFailures += o.subscribeFailures; senderPauses += o.senderPauses; replaysRefused += o.replaysRefused
            convergeMsMax = max(convergeMsMax, o.convergeMsMax)
            resends += o.resends; replays += o.replays; notRetainedMarkers += o.notRetainedMarkers
            diskQuotaDrops += o.diskQuotaDrops; deviceCrashes += o.deviceCrashes; receiverCrashes += o.receiverCrashes
            staleThroughs += o.staleThroughs; drops += o.drops; duplicates += o.duplicates; rejected += o.rejected
            connectionFailures += o.connectionFailures; conflicts += o.conflicts; refusals += o.refusals
            isolations += o.isolations; notAcked += o.notAcked; hostile += o.hostile; deadLetters += o.deadLetters
        }
    }
    var stats = Stats()

    init(seed: UInt64, variant: SimulationVariant = .correct, verbose: Bool = false) {
        self.seed = seed
        self.variant = variant
        self.verbose = verbose
        rng = SplitMix64(seed: seed)
        epoch = Epoch.random(using: &rng)
        recordTarget = 6 + rng.below(20)
        batchTopic = topics.batch.topic(device: device)
        // Odd seeds run the device with the compact encoding (spec §3.7), from the seed, not
        // the generator, so every other draw of a seed is the same in both encodings.
        encoding = seed & 1 == 0 ? .json : .compact
        session = Simulation.makeSession(device: device, epoch: epoch, head: .zero, acked: .zero, senderEnabled: true, encoding: encoding, rng: &rng)
    }

    static func makeSession(device: DeviceID, epoch: Epoch, head: SequenceNumber, acked: SequenceNumber, senderEnabled: Bool,
                            encoding: BatchEncoding, rng: inout SplitMix64) -> Session {
        var c = DeviceSyncConfiguration()
        c.sender.encoding = encoding
        c.sender.windowBatches = 1 + rng.below(4)
        c.sender.maxRecordsPerBatch = 1 + rng.below(5)
        c.sender.resendDelayInitial = .milliseconds(500 + rng.below(1500))
        c.sender.resendDelayMax = .seconds(8)
        c.sender.probeDelayMax = .seconds(3)
        c.statusInterval = .milliseconds(rng.below(3000))
        c.subscribeRetryInitial = .milliseconds(200 + rng.below(800))
        c.subscribeRetryMax = .seconds(4)
        return Session(device: device, epoch: epoch, head: head, acked: acked, senderEnabled: senderEnabled, configuration: c)
    }

    var wallMs: Int64 { now.nanoseconds / 1_000_000 }

    func log(_ s: @autoclosure () -> String) {
        if verbose { trace.append("[\(step) \(now)] \(s())") }
    }

    func fail(_ m: String) -> SimulationFailure { SimulationFailure(seed: seed, step: step, message: m) }

    // MARK: Run

    func run() throws(SimulationFailure) {
        let safetySteps = 70 + rng.below(130)
        while step < safetySteps {
            step += 1
            try randomStep()
            try checkInvariants()
        }
        // Liveness: faults stop, everything comes back, and the run must converge.
        faults = false
        log("--- liveness phase")
        livenessStart = now
        let staleBefore = stats.staleThroughs
        for k in receivers.indices where !receivers[k].up { receivers[k] = ReceiverSim() }
        if !senderEnabled { try switchSender() }
        if !deviceConnected { try connectDevice() }
        while Int(head.rawValue) < recordTarget { try append() }
        let limit = step + 5_000
        while !(sender.acked == head && storePrefix >= head && receivers.allSatisfy({ $0.machine.isIdle })) {
            guard step < limit else {
                throw fail("no progress: head \(head), device acked \(sender.acked), store prefix \(storePrefix), in flight \(sender.inFlightRanges), receivers idle \(receivers.map { $0.machine.isIdle })")
            }
            step += 1
            try calmStep()
            try checkInvariants()
        }
        // Recovery in seconds: once faults stop, the probe (capped backoff) and the backoff
        // reset on progress bring the run to convergence within a bounded virtual time; each
        // stale `through` (receivers that cannot see each other's commits yet, which goes on
        // in this phase) may cost one more probe.
        let convergeMs = (now.nanoseconds - livenessStart.nanoseconds) / 1_000_000
        stats.convergeMsMax = convergeMs
        let c = session.configuration
        let probeCap = max(c.sender.probeDelayMax, c.sender.resendDelayInitial)
        let bound = probeCap * (1 + stats.staleThroughs - staleBefore) + c.sender.resendDelayInitial * 4 + c.subscribeRetryMax
        let boundMs = Int64(bound / .milliseconds(1))
        if variant == .correct && convergeMs > boundMs {
            throw fail("took \(convergeMs) ms of virtual time to converge after the faults stopped (bound \(boundMs) ms)")
        }
        // Every record is stored exactly once with its values, or declared lost.
        var s = SequenceNumber(1)
        while s <= head {
            let n = rowCount[s.rawValue] ?? 0
            if n > 1 { throw fail("record \(s) stored \(n) times") }
            if n == 0 && !storedLoss.contains(s.rawValue) && !storedRejected.contains(s.rawValue) {
                throw fail("record \(s) neither stored nor declared lost")
            }
            s = s.next
        }
    }

    // MARK: Steps

    func randomStep() throws(SimulationFailure) {
        let r = rng.below(1000)
        switch r {
        case 0..<120: if Int(head.rawValue) < recordTarget { try append() }
        case 120..<330: try deliverToReceiver()
        case 330..<430: try deliverToDevice()
        case 430..<510: try commitStore()
        case 510..<560: try answerProgressRead()
        case 560..<660: try publishReceiverAck()
        case 660..<760: try answerLoad()
        case 760..<860: try advanceTime(by: .milliseconds(rng.below(1500)))
        case 860..<880:
            if !toReceivers.isEmpty { let k = rng.below(toReceivers.count); log("broker drops a batch"); toReceivers.remove(at: k); stats.drops += 1 }
        case 880..<900:
            if !toReceivers.isEmpty { let k = rng.below(toReceivers.count); log("broker duplicates a batch"); toReceivers.append(toReceivers[k]); stats.duplicates += 1 }
        case 900..<915:
            if !toDevice.isEmpty { log("broker drops an ack"); toDevice.remove(at: rng.below(toDevice.count)) }
        case 915..<935:
            if deviceConnected { try disconnectDevice() } else { try connectDevice() }
        case 935..<937: try switchSender()
        case 937..<945: try crashDevice()
        case 945..<960:
            let k = rng.below(receivers.count)
            if receivers[k].up {
                log("receiver \(k) crashes (\(receivers[k].pendingWrite == nil ? 0 : 1) transaction, \(receivers[k].pendingAcks.count) acks lost)")
                receivers[k].up = false
                stats.receiverCrashes += 1
            } else {
                log("receiver \(k) restarts")
                receivers[k] = ReceiverSim()
            }
        case 960..<970: try diskQuotaDrop()
        case 970..<980: trimAcked()
        case 980..<990: try requestReplay()
        case 990..<997: sendHostile()
        default:
            if !deviceConnected { try connectDevice() } else { try answerSubscribe() }
        }
    }

    func calmStep() throws(SimulationFailure) {
        if !deviceConnected { try connectDevice(); return }
        if pendingSubscribe != nil { try answerSubscribe(); return }
        var options: [Int] = []
        if !toReceivers.isEmpty { options.append(0) }
        if !toDevice.isEmpty { options.append(1) }
        if receivers.contains(where: { $0.pendingWrite != nil }) { options.append(2) }
        if receivers.contains(where: { !$0.pendingAcks.isEmpty }) { options.append(3) }
        if pendingLoad != nil { options.append(4) }
        if receivers.contains(where: { $0.pendingRead != nil }) { options.append(5) }
        if options.isEmpty {
            // Nothing in transit: only time moves things now.
            let timers = ([timerAt, subscribeRetryAt] + receivers.map(\.timerAt)).compactMap { $0 }
            guard let t = timers.min() else { throw fail("stuck: nothing in transit and no timer; acked \(sender.acked) head \(head)") }
            try advanceTime(by: now.duration(to: t))
            return
        }
        switch options[rng.below(options.count)] {
        case 0: try deliverToReceiver()
        case 1: try deliverToDevice()
        case 2: try commitStore()
        case 3: try publishReceiverAck()
        case 5: try answerProgressRead()
        default: try answerLoad()
        }
    }

    // MARK: Device

    func append() throws(SimulationFailure) {
        let s = head.next
        let value: SensorValue = rng.chance(50) ? .text("reject-me") : .number(Double(rng.below(1000)) / 4)
        let rec = LogRecord(sequence: s, timestamp: DeviceTimestamp(unixMilliseconds: now.nanoseconds / 1_000_000),
                            values: try! SensorValues(["v": value]))
        retained[s.rawValue] = rec
        truth[s.rawValue] = rec
        head = s
        log("device appends \(s)")
        try execute(session.headObserved(s, measuring: true, now: now, wallMilliseconds: wallMs))
    }

    func connectDevice() throws(SimulationFailure) {
        deviceConnected = true
        log("device connects")
        try execute(session.brokerConnected(now: now, wallMilliseconds: wallMs))
    }

    /// The broker answers the pending SUBSCRIBE; it may refuse it while faults are on. The
    /// retained ack comes with a granted subscription.
    func answerSubscribe() throws(SimulationFailure) {
        guard let c = pendingSubscribe else { return }
        pendingSubscribe = nil
        if faults && rng.chance(250) {
            log("subscribe \(c) fails")
            stats.subscribeFailures += 1
            try execute(session.subscribeFailed(connection: c, now: now))
            return
        }
        log("subscribed (\(c))")
        subscribed = true
        if let r = retainedAck { toDevice.append(r) }
        try execute(session.subscribed(connection: c, now: now))
    }

    func switchSender() throws(SimulationFailure) {
        senderEnabled.toggle()
        if !senderEnabled { stats.senderPauses += 1 }
        log("mqtt_sender:enabled = \(senderEnabled)")
        try execute(session.senderSwitched(enabled: senderEnabled, now: now))
    }

    func disconnectDevice() throws(SimulationFailure) {
        deviceConnected = false
        pendingSubscribe = nil
        subscribed = false
        toDevice.removeAll()
        log("device disconnects")
        try execute(session.brokerDisconnected(now: now))
    }

    func crashDevice() throws(SimulationFailure) {
        stats.deviceCrashes += 1
        log("device crashes (head \(head), persisted acked \(persistedAcked))")
        deviceConnected = false
        toDevice.removeAll()
        pendingLoad = nil
        pendingSubscribe = nil
        subscribed = false
        timerAt = nil
        subscribeRetryAt = nil
        openTickets = []  // the process died with its commands unanswered
        session = Simulation.makeSession(device: device, epoch: epoch, head: head, acked: persistedAcked, senderEnabled: senderEnabled,
                                         encoding: encoding, rng: &rng)
    }

    func diskQuotaDrop() throws(SimulationFailure) {
        // drop-oldest: the oldest retained records become a disk-quota loss marker.
        let first = max(retainedFrom, persistedAcked.next)
        guard first <= head, retained[first.rawValue] != nil else { return }
        var last = first
        let n = 1 + rng.below(3)
        while last.rawValue - first.rawValue + 1 < n, last < head, retained[last.next.rawValue] != nil { last = last.next }
        for s in first.rawValue...last.rawValue { retained[s] = nil }
        logLosses.append(LossMarker(range: SequenceRange(checked: first, last), reason: .diskQuota, recordedAtUnixMilliseconds: 0))
        logLosses.sort { $0.range.first < $1.range.first }
        log("device drops \(first)…\(last) (disk quota)")
        stats.diskQuotaDrops += 1
    }

    func trimAcked() {
        guard persistedAcked.next > retainedFrom else { return }
        retainedFrom = persistedAcked.next
        retained = retained.filter { $0.key >= retainedFrom.rawValue }
        logLosses.removeAll { $0.range.last < retainedFrom }
        log("device trims below \(retainedFrom)")
    }

    func requestReplay() throws(SimulationFailure) {
        guard head.rawValue > 0 else { return }
        // Any bound may be missing (the seed's send_measurements, a bare `replay`); ids repeat sometimes.
        let a = 1 + UInt64(rng.below(Int(head.rawValue)))
        let b = a + UInt64(rng.below(Int(head.rawValue - a + 1)))
        let query = ReplayQuery(requestID: rng.chance(250) ? nil : "r\(rng.below(6))",
                                from: rng.chance(250) ? nil : SequenceNumber(a), to: rng.chance(250) ? nil : SequenceNumber(b),
                                count: rng.chance(300) ? Int64(rng.below(4)) : nil)
        nextTicket += 1
        openTickets.insert(nextTicket)
        log("backend asks for replay \(query) (ticket \(nextTicket))")
        try execute(session.replayRequested(query, ticket: nextTicket, oldestRetained: retained.isEmpty ? nil : retainedFrom,
                                            logHead: head, now: now))
    }

    func answerLoad() throws(SimulationFailure) {
        guard let load = pendingLoad else { return }
        pendingLoad = nil
        var recs: [LogRecord] = []
        var s = load.from
        while s <= load.through, recs.count < load.limit {
            if let r = retained[s.rawValue] { recs.append(r) }
            s = s.next
        }
        let losses = logLosses.filter { $0.range.last >= load.from && $0.range.first <= load.through }
        log("log answers load from \(load.from): \(recs.count) records, \(losses.count) markers")
        try execute(session.recordsLoaded(from: load.from, records: recs, losses: losses, retainedFrom: retainedFrom,
                                         nowUnixMilliseconds: now.nanoseconds / 1_000_000, now: now))
    }

    func advanceTime(by d: Duration) throws(SimulationFailure) {
        now = now.advanced(by: d)
        if let t = subscribeRetryAt, t <= now {
            subscribeRetryAt = nil
            log("subscribe retry timer fires")
            try execute(session.timerFired(.subscribeRetry, now: now))
        }
        if let t = timerAt, t <= now {
            timerAt = nil
            log("timer fires")
            try execute(session.timerFired(.resend, now: now))
        }
        for k in receivers.indices where receivers[k].up {
            if let t = receivers[k].timerAt, t <= now {
                receivers[k].timerAt = nil
                try ingest(k, receivers[k].machine.timerFired(now: now))
            }
        }
    }

    func deliverToDevice() throws(SimulationFailure) {
        // The SUBACK comes before anything else on a new connection.
        if pendingSubscribe != nil { return try answerSubscribe() }
        guard !toDevice.isEmpty else { return }
        let payload = toDevice.remove(at: rng.below(toDevice.count))
        log("device gets an ack")
        try execute(session.ackPayloadReceived(payload, now: now))
    }

    func execute(_ actions: [Session.Action]) throws(SimulationFailure) {
        for a in actions {
            switch a {
            case .subscribe(let c):
                guard deviceConnected else { throw fail("subscribe while disconnected") }
                pendingSubscribe = c
            case .publishStatus(let status):
                guard deviceConnected else { throw fail("status published while disconnected") }
                if (status.acked ?? .zero) > storePrefix || (status.head ?? .zero) > head {
                    throw fail("status \(status) claims more than is stored or appended")
                }
            case .armTimer(.subscribeRetry, let at): subscribeRetryAt = at
            case .cancelTimer(.subscribeRetry): subscribeRetryAt = nil
            case .answerReplay(let ticket, let answer):
                guard openTickets.remove(ticket) != nil else { throw fail("replay ticket \(ticket) answered twice or never asked") }
                switch answer {
                case .refused(let why):
                    log("replay \(ticket) refused: \(why)")
                    stats.replaysRefused += 1
                case .finished(let resent, let notRetained):
                    log("replay \(ticket) finished: resent \(resent.map { "\($0)" } ?? "-"), not retained \(notRetained)")
                    stats.replays += 1
                    stats.notRetainedMarkers += notRetained.count
                    for r in notRetained where r.last >= retainedFrom { throw fail("replay says \(r) not retained but the log retains from \(retainedFrom)") }
                }
            case .loadRecords(let from, let through, let limit):
                guard pendingLoad == nil else { throw fail("second load while one is pending") }
                pendingLoad = (from, through, limit)
            case .publishBatch(let out):
                guard deviceConnected, subscribed, senderEnabled else {
                    throw fail("publish while disconnected, unsubscribed or paused")
                }
                log("device publishes \(out.batch.range)\(out.batch.replayRequestID != nil ? " (replay)" : "") resend \(out.resendCount) as \(out.encoding)")
                if out.encoding == .compact { stats.compactBatches += 1 }
                toReceivers.append((batchTopic, out.payload))
                if out.resendCount > 0 { stats.resends += 1 }
                if variant == .trimUnacked, out.batch.range.last > persistedAcked {
                    persistedAcked = out.batch.range.last
                    trimAcked()
                }
            case .persistAcked(let through):
                guard through <= head else { throw fail("persistAcked \(through) beyond head \(head)") }
                // Persisting may lag; a lost write just means a resend after a crash.
                if through > persistedAcked, !rng.chance(100) { persistedAcked = through }
            case .armTimer(.resend, let at): timerAt = at
            case .cancelTimer(.resend): timerAt = nil
            case .reportAnomaly(let m):
                throw fail("sender anomaly: \(m)")
            }
        }
    }

    // MARK: Receivers and store

    /// Carries out the ingest machine's actions as its shell does (IngestWriter), recording
    /// what would happen in the database and on the broker.
    func ingest(_ k: Int, _ actions: [Ingest.Action]) throws(SimulationFailure) {
        for a in actions {
            switch a {
            case .write(let tx):
                guard receivers[k].pendingWrite == nil, receivers[k].pendingRead == nil else { throw fail("receiver \(k): second transaction while one is outstanding") }
                // Every row must fit its column: by construction, never by the database's say.
                let violations = StoreRows(tx).violations()
                guard violations.isEmpty else { throw fail("receiver \(k) would write rows that do not fit: \(violations.prefix(3))") }
                receivers[k].pendingWrite = tx
                if variant == .ackBeforeStore {
                    for b in tx.batches where b.device == device {
                        receivers[k].pendingAcks.append(SyncCodec.encode(Ack(device: device, epoch: epoch, through: b.range.last, stored: b.range)))
                    }
                }
            case .readProgress(let id, let queries):
                guard receivers[k].pendingRead == nil else { throw fail("receiver \(k): second progress read") }
                receivers[k].pendingRead = (id, queries)
            case .publishAcks(let acks):
                for ack in acks {
                    guard ack.topic == topics.ack.topic(device: ack.ack.device) else { throw fail("ack on topic \(ack.topic)") }
                    guard ack.ack.device == device, variant != .ackBeforeStore else { continue }
                    receivers[k].pendingAcks.append(ack.payload)
                }
            case .armTimer(let at): receivers[k].timerAt = at
            case .retrying(_, let failure, _, _):
                log("receiver \(k) retries: \(failure)")
            case .isolating(_, _, let n):
                stats.isolations += 1
                log("receiver \(k) isolates a refused transaction of \(n) messages")
            case .notAcked(let key, let reason):
                stats.notAcked += 1
                log("receiver \(k) does not ack \(key): \(reason)")
            case .abandoned(let topic, _, let reason):
                throw fail("receiver \(k) abandoned a message on \(topic): \(reason)")
            case .committed(let report):
                stats.deadLetters += report.deadLetters.count
                if let honest = report.deadLetters.first(where: { $0.topicDevice == device && $0.reason != .storeRefused }) {
                    throw fail("dead letter for the honest device: \(honest.reason) \(honest.message)")
                }
            case .pauseReading, .resumeReading, .reconnectDatabase, .compact, .dropped:
                break
            }
        }
    }

    func deliverToReceiver() throws(SimulationFailure) {
        guard !toReceivers.isEmpty else { return }
        let (topic, payload) = toReceivers.remove(at: rng.below(toReceivers.count))
        let k = rng.below(receivers.count)  // the shared subscription picks one
        guard receivers[k].up else { log("receiver \(k) is down; message lost"); return }
        log("receiver \(k) takes a message on \(topic)")
        try ingest(k, receivers[k].machine.messageReceived(topic: topic, payload: payload, now: now))
    }

    /// The hostile device sends garbage and boundary values on its own topics.
    func sendHostile() {
        let m = HostilePayloads.any(device: evil, topics: topics, using: &rng)
        stats.hostile += 1
        hostileSent += 1
        toReceivers.append((m.topic, m.payload))
        if m.kind == .d2Overflow { toReceivers += HostilePayloads.d2Pair(device: evil, topics: topics) }
        if variant == .uncheckedTimestampArithmetic, m.kind == .d3Timestamp || m.kind == .boundaryNumbers {
            // What the old shell computed for the device-lag metric on any accepted integer.
            if case .array(let records)? = (try? JSONReader.parse(m.payload))?["records"] {
                for r in records {
                    if case .integer(let ts)? = r["ts"], Int64(1_700_000_000_000).subtractingReportingOverflow(ts).overflow {
                        shadowFailure = "device lag now − ts overflows for ts \(ts) (the old codec accepted it)"
                    }
                }
            }
        }
    }
    var shadowFailure: String?

    /// The store: applies a transaction the way MariaDB would (INSERT IGNORE on the keys, all
    /// or nothing), or fails it the way MariaDB can.
    func storeApply(_ tx: IngestTransaction) throws(SimulationFailure) {
        for req in tx.batches {
            let key = EpochKey(device: req.device, epoch: req.epoch)
            committedRanges[key, default: []].append(req.range)
            guard req.device == device, req.epoch == epoch else { continue }
            for r in req.records {
                let s = r.sequence.rawValue
                guard truth[s] == r else { throw fail("record \(s) differs from what the device appended") }
                // INSERT IGNORE on (device, epoch, seq); the broken store inserts every time.
                if rowCount[s] == nil || variant == .nonIdempotentStore { rowCount[s, default: 0] += 1 }
                if rowCount[s]! > 1 { throw fail("record \(s) stored \(rowCount[s]!) times") }
            }
            for r in req.rejected { storedRejected.insert(r.sequence.rawValue); stats.rejected += 1 }
            for l in req.losses {
                for s in l.range.first.rawValue...l.range.last.rawValue { storedLoss.insert(s) }
            }
        }
        deadLetterRows += tx.deadLetters.count
        rangeHistory.append(committedRanges)
        if rangeHistory.count > 64 { rangeHistory.removeFirst() }
        func covered(_ s: UInt64) -> Bool { rowCount[s] != nil || storedLoss.contains(s) || storedRejected.contains(s) }
        while covered(storePrefix.next.rawValue) { storePrefix = storePrefix.next }
        prefixHistory.append(storePrefix)
    }

    /// The values MariaDB refuses in this simulation: a record whose text is "reject-me".
    func refuses(_ tx: IngestTransaction) -> Bool {
        tx.batches.contains { b in b.records.contains { if case .text("reject-me")? = $0.values["v"] { return true } else { return false } } }
    }

    func commitStore() throws(SimulationFailure) {
        let busy = receivers.indices.filter { receivers[$0].up && receivers[$0].pendingWrite != nil }
        guard !busy.isEmpty else { return }
        let k = busy[rng.below(busy.count)]
        let tx = receivers[k].pendingWrite!
        receivers[k].pendingWrite = nil
        var failure: StoreFailure?
        if refuses(tx) {
            stats.refusals += 1
            failure = variant == .refusalsRetriedForEver ? .connection("refused, but taken for a lost connection") : .refused("1366 incorrect string value")
        } else if faults && rng.chance(60) {
            stats.connectionFailures += 1
            failure = .connection("2013 lost connection")
        } else if faults && rng.chance(60) {
            stats.conflicts += 1
            failure = .conflict("1213 certification failure")
        } else if faults && rng.chance(15) {
            failure = .unknown("1105 unknown error")
        }
        if let failure {
            log("receiver \(k) \(tx.id) fails: \(failure)")
            try ingest(k, receivers[k].machine.transactionFailed(tx.id, failure: failure, now: now))
            return
        }
        try storeApply(tx)
        log("receiver \(k) committed \(tx.id): \(tx.batches.map(\.range)) (prefix \(storePrefix))")
        let inserted = tx.recordCount  // what the affected-row counts say (duplicates are not counted apart here)
        try ingest(k, receivers[k].machine.transactionCommitted(tx.id, result: WriteResult(readingsInserted: inserted, legacyInserted: 0), now: now))
    }

    /// Answers a progress read from the committed ranges, sometimes from an older snapshot
    /// (another node's commit not yet applied, or even the reader's own: a lagging read).
    func answerProgressRead() throws(SimulationFailure) {
        let busy = receivers.indices.filter { receivers[$0].up && receivers[$0].pendingRead != nil }
        guard !busy.isEmpty else { return }
        let k = busy[rng.below(busy.count)]
        let (id, queries) = receivers[k].pendingRead!
        receivers[k].pendingRead = nil
        if faults && rng.chance(40) {
            try ingest(k, receivers[k].machine.progressReadFailed(id, failure: .connection("2006 server has gone away"), now: now))
            return
        }
        var view = committedRanges
        if rng.chance(200) { view = rangeHistory[rng.below(rangeHistory.count)]; stats.staleThroughs += 1 }
        var answer = queries.map { q in (view[q.key] ?? []).filter { $0.last > q.above } }
        if variant == .ackBatchMax {
            // A store that keeps "the highest number seen" instead of the ranges.
            answer = queries.map { q in
                let top = (view[q.key] ?? []).map(\.last).max()
                return top.map { [SequenceRange(checked: SequenceNumber(1), $0)] } ?? []
            }
        }
        if variant == .trappingAckRule {
            for (q, ranges) in zip(queries, answer) {
                // The old rule: `if r.first > through.next` — `next` trapped at 2^53.
                var through = q.above
                for r in ranges.sorted(by: { $0.first < $1.first }) {
                    if through == SequenceNumber.max { shadowFailure = "the old ack rule traps: through.next at \(through) for \(q.key)"; break }
                    if r.first > through.next { break }
                    if r.last > through { through = r.last }
                }
            }
        }
        try ingest(k, receivers[k].machine.progressRead(id, ranges: answer, nowUnixMilliseconds: 1_700_000_000_000 + now.nanoseconds / 1_000_000, now: now))
    }

    func publishReceiverAck() throws(SimulationFailure) {
        let busy = receivers.indices.filter { receivers[$0].up && !receivers[$0].pendingAcks.isEmpty }
        guard !busy.isEmpty else { return }
        let k = busy[rng.below(busy.count)]
        let payload = receivers[k].pendingAcks.removeFirst()
        let ack = try! SyncCodec.decodeAck(payload)
        // Invariant: an ack never passes a record that is not stored.
        guard ack.through <= storePrefix else {
            throw fail("receiver \(k) publishes ack through \(ack.through) but the store is contiguous only through \(storePrefix)")
        }
        log("receiver \(k) publishes ack through \(ack.through)")
        retainedAck = payload
        if deviceConnected { toDevice.append(payload) }
    }

    func checkInvariants() throws(SimulationFailure) {
        if let shadowFailure { throw fail(shadowFailure) }
        if sender.acked > storePrefix || persistedAcked > storePrefix {
            throw fail("device acked \(sender.acked) (persisted \(persistedAcked)) but the store is contiguous only through \(storePrefix)")
        }
        if sender.inFlightRanges.count > sender.configuration.windowBatches {
            throw fail("\(sender.inFlightRanges.count) batches in flight; window is \(sender.configuration.windowBatches)")
        }
        if sender.acked > sender.head { throw fail("acked \(sender.acked) beyond head \(sender.head)") }
    }
}
