import Device
import GPIO
import XCTest

/// Debounce and toggle logic with synthetic edge events (no GPIO hardware needed).
final class ButtonTests: XCTestCase {
    typealias EdgeKind = GPIOEdgeEvent.Kind

    /// An edge at `ms` milliseconds of the kernel's monotonic clock.
    func event(_ kind: EdgeKind, _ ms: UInt64) -> GPIOEdgeEvent { GPIOEdgeEvent(kind: kind, timestamp: .milliseconds(Int64(ms))) }

    func presses(_ edges: [(EdgeKind, UInt64)], edge: EdgeKind = .falling, bounceMs: Int64 = 20) -> [UInt64] {
        var d = PressDetector(pressEdge: edge, bounce: .milliseconds(bounceMs))
        return edges.filter { d.edge(event($0.0, $0.1)) }.map(\.1)
    }

    func testCleanPressAndReleaseGiveOnePress() {
        XCTAssertEqual(presses([(.falling, 1000), (.rising, 1200)]), [1000])
    }

    func testABouncyPressGivesOnePress() {
        // Press at 1000 ms bouncing for 8 ms, release at 1300 ms bouncing for 5 ms.
        let edges: [(EdgeKind, UInt64)] = [(.falling, 1000), (.rising, 1002), (.falling, 1003), (.rising, 1005), (.falling, 1008),
                                           (.rising, 1300), (.falling, 1301), (.rising, 1305)]
        XCTAssertEqual(presses(edges), [1000])
    }

    func testALongBounceBurstStillGivesOnePress() {
        // Edges every 10 ms for 200 ms: each restarts the quiet period.
        var edges: [(EdgeKind, UInt64)] = []
        for i in 0..<20 { edges.append((i % 2 == 0 ? .falling : .rising, 1000 + UInt64(i) * 10)) }
        XCTAssertEqual(presses(edges), [1000])
    }

    func testTwoSeparatePressesGiveTwo() {
        XCTAssertEqual(presses([(.falling, 1000), (.rising, 1100), (.falling, 2000), (.rising, 2100)]), [1000, 2000])
    }

    func testRisingEdgeConfiguration() {
        XCTAssertEqual(presses([(.falling, 1000), (.rising, 1100)], edge: .rising), [1100])
    }

    func testZeroBounceCountsEveryPressEdge() {
        XCTAssertEqual(presses([(.falling, 1), (.falling, 2), (.rising, 3)], bounceMs: 0), [1, 2])
    }

    func testToggleFlipsTheMeasurementSwitch() async {
        let settings = RuntimeSettings(defaults: .init(measurementEnabled: true, measurementInterval: .seconds(2), senderEnabled: true, senderInterval: .seconds(1)))
        var toggle = ButtonToggle(detector: PressDetector(pressEdge: .falling, bounce: .milliseconds(20)))
        for (kind, t) in [(EdgeKind.falling, UInt64(1000)), (.rising, 1001), (.falling, 1002), (.rising, 1200), (.falling, 3000), (.rising, 3200)] {
            if toggle.edge(event(kind, t)) == .toggle { _ = await settings.toggleMeasurement() }
        }
        XCTAssertEqual(toggle.presses, 2)
        let s = await settings.switches
        XCTAssertTrue(s.measurementEnabled, "two presses: off, then on again")
        let pending = await settings.pendingWrites
        XCTAssertEqual(pending[.measurementEnabled], .enabled(true), "the change is queued for Redis")
    }
}
