// Redis wrapper against the shared stack's Redis, and a private Redis the test restarts.
import Foundation
import Redis
import TestSupport
import XCTest

final class RedisTests: XCTestCase {
    private var stack: Stack!
    private var prefix: String!

    override func setUpWithError() throws {
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack (run scripts/stack up)") }
        self.stack = stack
        prefix = Stack.uniqueName("clients")
    }

    private func connection(port: Int? = nil) -> RedisConnection {
        RedisConnection(configuration: RedisConfiguration(host: stack.redisHost, port: port ?? stack.redisPort,
                                                          connectTimeout: .seconds(1), commandTimeout: .seconds(2)))
    }

    func testBinarySafeKeysAndValuesWithNulBytes() async throws {
        let redis = connection()
        let key = Array("\(prefix!):bin\u{0}key".utf8)
        let value: [UInt8] = [0, 1, 2, 0, 255, 13, 10, 0]
        let set = try await redis.command([Array("SET".utf8), key, value])
        XCTAssertEqual(set, .status("OK"))
        let got = try await redis.command([Array("GET".utf8), key])
        XCTAssertEqual(got, .bulk(value))
        let length = try await redis.command([Array("STRLEN".utf8), key])
        XCTAssertEqual(length, .integer(8))
        let empty = try await redis.command("SET", "\(prefix!):empty", "")
        XCTAssertEqual(empty, .status("OK"))
        let gotEmpty = try await redis.command("GET", "\(prefix!):empty")
        XCTAssertEqual(gotEmpty, .bulk([]))
        let missing = try await redis.command("GET", "\(prefix!):missing")
        XCTAssertEqual(missing, .null)
        _ = try await redis.command([Array("DEL".utf8), key, Array("\(prefix!):empty".utf8)])
    }

    func testStreamAppendAndRange() async throws {
        let redis = connection()
        let stream = "\(prefix!):measurement:values"
        var ids: [String] = []
        for i in 1...3 {
            let reply = try await redis.command("XADD", stream, "*", "random", String(i * 10), "unit", "°C")
            ids.append(try XCTUnwrap(reply.string))
        }
        let range = try await redis.command("XRANGE", stream, "-", "+")
        let entries = try XCTUnwrap(range.array)
        XCTAssertEqual(entries.count, 3)
        for (i, entry) in entries.enumerated() {
            let parts = try XCTUnwrap(entry.array)
            XCTAssertEqual(parts[0].string, ids[i])
            XCTAssertEqual(parts[1], .array([.bulk(Array("random".utf8)), .bulk(Array(String((i + 1) * 10).utf8)),
                                             .bulk(Array("unit".utf8)), .bulk(Array("°C".utf8))]))
        }
        // Exclusive start after the first id, as the seed's mqtthandler reads.
        let after = try await redis.command("XRANGE", stream, "(" + ids[0], "+", "COUNT", "10")
        XCTAssertEqual(after.array?.count, 2)
        let length = try await redis.command("XLEN", stream)
        XCTAssertEqual(length, .integer(3))
        _ = try await redis.command("DEL", stream)
    }

    func testErrorRepliesAreValuesAndThrowWhenAskedTo() async throws {
        let redis = connection()
        let key = "\(prefix!):text"
        _ = try await redis.command("SET", key, "not a number")
        let incr = try await redis.command("INCR", key)
        guard case .error(let message) = incr else { return XCTFail("expected an error reply, got \(incr)") }
        XCTAssertTrue(message.hasPrefix("ERR"), message)
        let wrongType = try await redis.command("XADD", key, "*", "a", "1")
        XCTAssertTrue(wrongType.description.contains("WRONGTYPE"), wrongType.description)
        do {
            _ = try await redis.command("NOSUCHCOMMAND", "x").throwingServerError(command: "NOSUCHCOMMAND")
            XCTFail("expected a thrown server error")
        } catch let error as RedisError {
            XCTAssertEqual(error.kind, .serverError)
            XCTAssertTrue(error.description.contains("NOSUCHCOMMAND"), error.description)
            XCTAssertTrue(error.message.lowercased().contains("unknown command"), error.message)
        }
        // Error replies do not break the connection.
        let ping = try await redis.command("PING")
        XCTAssertEqual(ping, .status("PONG"))
        do {
            _ = try await redis.command([String]())
            XCTFail("expected a usage error")
        } catch let error as RedisError {
            XCTAssertEqual(error.kind, .usage)
        }
        _ = try await redis.command("DEL", key)
    }

    /// Commands and a pipeline of 100 run in order on the connection's own thread.
    func testPipelineAndCommandsInOrder() async throws {
        let redis = connection()
        let key = "\(prefix!):counter"
        try await redis.connect()
        _ = try await redis.command(["DEL", key])
        var replies = try await redis.pipeline((1...100).map { _ in [Array("INCR".utf8), Array(key.utf8)] })
        replies.append(try await redis.command(["GET", key]))
        _ = try await redis.command(["DEL", key])
        XCTAssertEqual(replies.count, 101)
        XCTAssertEqual(Array(replies.prefix(100)), (1...100).map { RedisReply.integer(Int64($0)) })
        XCTAssertEqual(replies.last?.integer, 100)
    }

    func testConnectToAClosedPortFailsClearly() async throws {
        let port = Ports.free()
        let redis = connection(port: port)
        do {
            _ = try await redis.command("PING")
            XCTFail("expected a connect error")
        } catch let error as RedisError {
            XCTAssertEqual(error.kind, .connect)
            XCTAssertTrue(error.isConnectionError)
            XCTAssertTrue(error.description.contains("connect to 127.0.0.1:\(port)"), error.description)
            XCTAssertTrue(error.message.contains("refused"), error.message)
        }
    }

    // @MainActor: TestSupport's ManagedProcess notices a stopped child only when stopped from the
    // main thread; elsewhere `stop()` waits out its whole grace period.
    @MainActor func testReconnectsAfterTheServerRestarts() async throws {
        let server = try PrivateRedis()
        try server.start()
        let redis = connection(port: server.port)
        _ = try await redis.command("SET", "k", "before restart")

        // Restart while idle: the hang-up is noticed before sending, so the command just works.
        server.stop()
        try server.start()
        let afterIdleRestart = try await redis.command("GET", "k")
        XCTAssertEqual(afterIdleRestart.string, "before restart", "AOF keeps the value over a graceful restart")

        // While the server is down, commands fail with a connection error...
        server.stop()
        do {
            _ = try await redis.command("GET", "k")
            XCTFail("expected a connection error while the server is down")
        } catch let error as RedisError {
            XCTAssertTrue(error.isConnectionError, error.description)
            XCTAssertFalse(redis.isConnected)
        }
        // ...and the first command after it is back reconnects.
        try server.start()
        let set = try await redis.command("SET", "k", "after restart")
        XCTAssertEqual(set, .status("OK"))
        let get = try await redis.command("GET", "k")
        XCTAssertEqual(get.string, "after restart")

        // A crash (SIGKILL) mid-session: same story.
        server.kill9()
        try server.start()
        let ping = try await redis.command("PING")
        XCTAssertEqual(ping, .status("PONG"))
        redis.close()
        do {
            _ = try await redis.command("PING")
            XCTFail("expected an error after close")
        } catch let error as RedisError {
            XCTAssertEqual(error.kind, .usage)
        }
    }

    /// A restarted Redis accepts connections while it still loads its dataset and answers
    /// "-LOADING"; the reconnect waits that out, so the first command after a restart works.
    /// `key-load-delay` (µs per key) makes the loading phase last about a second here; Redis
    /// answers clients only every 1024 AOF commands while loading, hence more keys than that.
    @MainActor func testReconnectWaitsWhileTheServerLoadsItsDataset() async throws {
        let server = try PrivateRedis()
        let conf = server.directory.file("redis.conf")
        try (String(contentsOfFile: conf, encoding: .utf8) + "\nkey-load-delay 300\n").write(toFile: conf, atomically: true, encoding: .utf8)
        try server.start()
        let redis = connection(port: server.port)
        let replies = try await redis.pipeline((0..<3000).map { [Array("SET".utf8), Array("k\($0)".utf8), Array("v\($0)".utf8)] })
        XCTAssertEqual(replies.filter { $0 == .status("OK") }.count, 3000)
        server.stop()
        try server.start() // listening again, but loading 3000 keys at 0.3 ms each
        let value = try await redis.command("GET", "k2999")
        XCTAssertEqual(value.string, "v2999", "\(value)")
        redis.close()
        server.stop()
    }

    @MainActor func testCommandTimeoutIsAConnectionError() async throws {
        let server = try PrivateRedis()
        try server.start()
        let redis = RedisConnection(configuration: RedisConfiguration(port: server.port, commandTimeout: .milliseconds(300)))
        let pong = try await redis.command("PING")
        XCTAssertEqual(pong, .status("PONG"))
        server.process.pause()
        defer { server.process.resume() }
        let started = ContinuousClock.now
        do {
            _ = try await redis.command("PING")
            XCTFail("expected a timeout")
        } catch let error as RedisError {
            XCTAssertEqual(error.kind, .io)
            XCTAssertTrue(error.message.contains("command timeout"), error.message)
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(3))
        server.process.resume()
        let again = try await redis.command("PING")
        XCTAssertEqual(again, .status("PONG"))
    }
}
