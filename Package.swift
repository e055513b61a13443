// swift-tools-version:6.1
// Fieldlog: an offline-first, sequence-numbered replicated log for sensor fleets.
//
// Map of the tree:
//   C…            system-library targets, one per C library (found with pkg-config)
//   FieldlogCore  domain types shared by all (DeviceID, Epoch, SequenceNumber, LogRecord,
//                 LossMarker), the one wall clock, Duration units, the retry loop, the seeded PRNG
//   Threading     the concurrency model's pieces (docs/concurrency.md): OwnerThread and ThreadConfined,
//                 which own every blocking C handle off the cooperative pool; locks; executor timers
//   Log           the device's durable SQLite log
//   Sync          the sync protocol: messages, codecs (JSON, compact), sans-IO state machines (no IO)
//   MQTT          thin, safe wrapper over libmosquitto (MQTT v5)
//   Redis         thin, safe wrapper over hiredis
//   MariaDB       thin, safe wrapper over MariaDB Connector/C
//   GPIO          thin, safe wrapper over libgpiod v1.6 (start/stop button)
//   Settings      the configuration layer of both programs: settings tables (the schema), values from
//                 command line, environment and file, typed checks, one ConfigurationError, reference docs
//   Device        the device's components: sampler, button, sync agent, commands, status page,
//                 runtime switches and the Redis hot-state mirror
//   DeviceNode    `fieldlog-device`, the program on each device (arguments, starts Device's services)
//   BackendStore  the backend's MariaDB side: settings (read through swift-configuration's providers),
//                 schema and migrations, every write and read
//   Ingest        `fieldlog-backend ingest`: the MQTT and database shell around Sync's IngestStateMachine, /metrics
//   Audit         gaps per device and epoch, replay commands
//   WebAdmin      the web admin (pages, JSON API, users and roles, live streams)
//   BackendNode   `fieldlog-backend`, the program: arguments, starts the libraries' services
//   Processes     child processes and the one restartable process wrapper, tools, loopback
//                 ports, blocking calls off the pool (lab, benchmarks, tests)
//   OutageLab     fault-injecting proxy, fleet orchestration, fault schedule, independent checker
//   LabNode       `fieldlog-lab`;  Bench `fieldlog-bench`;  LogTorture (a test helper program)
//   LabClockShift a preload library (C) that moves a lab device's wall clock from outside
//   BrokenIngest  the lab's deliberately broken ingest (Tests/BrokenIngest; test-only)
//   TestSupport   what the test targets share: private services, the test database, hostile payloads
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "fieldlog",
    platforms: [.macOS(.v15)],  // v15: Synchronization.Mutex
    products: [
        .executable(name: "fieldlog-device", targets: ["DeviceNode"]),
        .executable(name: "fieldlog-backend", targets: ["BackendNode"]),
        .executable(name: "fieldlog-lab", targets: ["LabNode"]),
        .executable(name: "fieldlog-bench", targets: ["Bench"]),
        .library(name: "Log", targets: ["Log"]),
        .library(name: "Sync", targets: ["Sync"]),
        // The outage lab preloads it into clock-scenario devices (LD_PRELOAD).
        .library(name: "LabClockShift", type: .dynamic, targets: ["LabClockShift"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The backend's web admin and /metrics (not in fieldlog-device since its status server is
        // plain NIO). No default traits: FullFoundation would link full Foundation and its ICU
        // data (~45 MB), ConfigurationSupport swift-configuration (which imports Foundation);
        // neither is used (docs/device.md, "Binary size").
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        // The backend's configuration sources (BackendStore). No traits: JSON would import full
        // Foundation. Not in fieldlog-device: it adds 0.68 MB there, over the 25 MB cap (docs/device.md).
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: []),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
        // 2.100.0: NIOHTTPDecoderLimitConfiguration, the request header limits of the device's status server.
        .package(url: "https://github.com/apple/swift-nio", from: "2.100.0"),
    ],
    targets: [
        // C libraries
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CMosquitto", pkgConfig: "libmosquitto", providers: [.apt(["libmosquitto-dev"])]),
        .systemLibrary(name: "CMariaDB", pkgConfig: "libmariadb", providers: [.apt(["libmariadb-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CGPIOD", pkgConfig: "libgpiod", providers: [.apt(["libgpiod-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Domain types
        .target(name: "FieldlogCore", swiftSettings: strict),
        // Threads that own C handles, locks, executor timers (docs/concurrency.md)
        .target(name: "Threading", dependencies: ["FieldlogCore"], swiftSettings: strict),

        // Wrappers
        .target(name: "Redis", dependencies: ["FieldlogCore", "Threading", "CHiredis", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "MQTT", dependencies: ["CMosquitto", "FieldlogCore", "Threading", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "MariaDB", dependencies: ["FieldlogCore", "Threading", "CMariaDB", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "GPIO", dependencies: ["CGPIOD", "FieldlogCore", "Threading"], swiftSettings: strict),

        // Product libraries
        .target(name: "Log", dependencies: ["FieldlogCore", "Threading", "CSQLite", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "Sync", dependencies: ["FieldlogCore", "CZlib"], swiftSettings: strict),

        // The configuration layer of both programs (no swift-configuration: the device cannot afford it)
        .target(name: "Settings", dependencies: ["FieldlogCore", "Sync"], swiftSettings: strict),

        // The device node's components (sampler, button, sync agent, commands, status server)
        .target(name: "CDeviceSupport"),
        .target(
            name: "Device",
            dependencies: [
                "CDeviceSupport", "FieldlogCore", "Threading", "Log", "Sync", "MQTT", "Redis", "GPIO", "Settings",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // The status server: plain NIO HTTP/1 (Hummingbird cost the device 2.96 MB, docs/device.md).
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict),

        // Executables
        .executableTarget(
            name: "DeviceNode",
            dependencies: [
                "FieldlogCore", "Log", "Sync", "MQTT", "Redis", "GPIO", "Device", "Settings",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        // The backend's libraries (behind the thin `fieldlog-backend`)
        .target(name: "BackendStore",
                dependencies: ["FieldlogCore", "Sync", "MariaDB", "Settings", .product(name: "Logging", package: "swift-log"),
                               .product(name: "Configuration", package: "swift-configuration")],
                swiftSettings: strict),
        .target(name: "Ingest",
                dependencies: ["BackendStore", "FieldlogCore", "Sync", "MQTT", "MariaDB",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "Metrics", package: "swift-metrics"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "Hummingbird", package: "hummingbird")],
                swiftSettings: strict),
        .target(name: "Audit",
                dependencies: ["BackendStore", "FieldlogCore", "Sync", "MQTT", "MariaDB", .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        .target(name: "WebAdmin",
                dependencies: ["BackendStore", "Audit", "FieldlogCore", "Threading", "Sync", "MQTT", "MariaDB", "Settings",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "HummingbirdBcrypt", package: "hummingbird-auth")],
                swiftSettings: strict),
        .executableTarget(
            name: "BackendNode",
            dependencies: [
                "BackendStore", "Ingest", "Audit", "WebAdmin", "FieldlogCore", "Threading", "Sync", "MQTT", "MariaDB", "Settings",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: strict),

        // Benchmarks (not tests): `fieldlog-bench <name>`
        .executableTarget(
            name: "Bench",
            dependencies: ["FieldlogCore", "Threading", "Log", "CSQLite", "Sync", "MQTT", "MariaDB", "Device", "Settings", "Processes", "CMosquitto", "CMariaDB",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),

        // Test helper: appends at full speed, printing each returned seq (SIGKILL and multi-process tests)
        .executableTarget(name: "LogTorture", dependencies: ["FieldlogCore", "Log", .product(name: "Logging", package: "swift-log")],
                          path: "Sources/LogTorture", swiftSettings: strict),

        // Outage lab: fault-injecting proxy, fleet orchestration, seeded fault schedule, independent checker
        // Child processes (posix_spawn + a wait thread each), tools, loopback ports: for the lab, the benchmarks and the tests
        .target(name: "Processes", dependencies: ["FieldlogCore"], swiftSettings: strict),
        // FieldlogCore for its clock and PRNG only: the checker uses none of the code under test.
        .target(name: "OutageLab", dependencies: ["CSQLite", "FieldlogCore", "Processes", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .target(name: "LabClockShift", linkerSettings: [.linkedLibrary("dl")]),
        .executableTarget(name: "LabNode", dependencies: ["OutageLab", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                          .product(name: "Logging", package: "swift-log")], swiftSettings: strict),

        // Tests
        // The lab's deliberately broken ingest (acks before it commits); only BrokenBuildTests runs it.
        .executableTarget(name: "BrokenIngest",
                          dependencies: ["BackendStore", "Ingest", "Sync", "Settings",
                                         .product(name: "Logging", package: "swift-log"),
                                         .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                          path: "Tests/BrokenIngest", swiftSettings: strict),
        .target(name: "TestSupport", dependencies: ["Processes", "FieldlogCore", "Sync", "BackendStore", "MariaDB", "Settings",
                                                   .product(name: "Logging", package: "swift-log")],
                path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "ClientTests", dependencies: ["MQTT", "MariaDB", "GPIO", "Redis", "Threading", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "LogTests", dependencies: ["Processes", "FieldlogCore", "Threading", "Log", "CSQLite", "TestSupport", "LogTorture", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .testTarget(name: "SyncTests", dependencies: ["FieldlogCore", "Sync", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "WebTests", dependencies: ["BackendStore", "Ingest", "Audit", "WebAdmin", "FieldlogCore", "Sync", "MQTT", "MariaDB", "Processes", "Settings", "TestSupport", .product(name: "HummingbirdTesting", package: "hummingbird")], swiftSettings: strict),
        .testTarget(name: "IntegrationTests", dependencies: ["OutageLab", "Processes", "TestSupport", "BrokenIngest", .product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        .testTarget(name: "DeviceTests", dependencies: ["Processes", "Device", "FieldlogCore", "GPIO", "Log", "Sync", "MQTT", "Redis", "Settings", "TestSupport", .product(name: "Logging", package: "swift-log"),
                                                   .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")], swiftSettings: strict),
        .testTarget(name: "BackendTests", dependencies: ["BackendStore", "Ingest", "Audit", "WebAdmin", "FieldlogCore", "Sync", "MQTT", "MariaDB", "Processes", "Settings", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "GaleraTests", dependencies: ["BackendStore", "Ingest", "Audit", "FieldlogCore", "Sync", "MQTT", "MariaDB", "Processes", "TestSupport"], swiftSettings: strict),
    ]
)
