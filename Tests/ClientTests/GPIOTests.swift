// GPIO wrapper: these machines have no GPIO chips (and no gpio-sim/gpio-mockup modules), so the
// hardware path is checked through its error reporting; the debouncer is tested on synthetic time.
import Foundation
import GPIO
import XCTest

final class GPIOTests: XCTestCase {
    func testAMissingChipGivesAnErrorNamingTheChip() {
        for chip in ["gpiochip-fieldlog-missing", "/dev/gpiochip-fieldlog-missing", "97"] {
            XCTAssertThrowsError(try GPIOEdgeInput(configuration: GPIOConfiguration(chip: chip, line: 2))) { error in
                guard let error = error as? GPIOError else { return XCTFail("unexpected error \(error)") }
                XCTAssertEqual(error.chip, chip)
                XCTAssertEqual(error.operation, "open chip")
                XCTAssertTrue(error.description.contains("chip \"\(chip)\""), error.description)
                XCTAssertFalse(error.message.isEmpty)
            }
        }
    }

    func testTheDefaultChipOnAMachineWithoutGPIOSaysSo() throws {
        let hasChips = (try? FileManager.default.contentsOfDirectory(atPath: "/dev"))?.contains { $0.hasPrefix("gpiochip") } ?? false
        try XCTSkipIf(hasChips, "this machine has GPIO chips")
        XCTAssertThrowsError(try GPIOEdgeInput(configuration: GPIOConfiguration())) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("\"gpiochip0\""), text)
            XCTAssertTrue(text.contains("no /dev/gpiochip*"), text)
        }
        XCTAssertThrowsError(try GPIOEdgeInput(configuration: GPIOConfiguration(chip: ""))) { error in
            XCTAssertTrue("\(error)".contains("empty"), "\(error)")
        }
    }

    func testDebouncerDropsBouncesWithinTheInterval() {
        var debouncer = Debouncer(interval: .milliseconds(20))
        // A press at 1 s that bounces for 15 ms, then a second press 500 ms later.
        let times: [Duration] = [.seconds(1), .seconds(1) + .milliseconds(3), .seconds(1) + .milliseconds(15),
                                 .seconds(1) + .milliseconds(19), .seconds(1) + .milliseconds(20),
                                 .seconds(1) + .milliseconds(500), .seconds(1) + .milliseconds(501)]
        let accepted = times.map { debouncer.accept(at: $0) }
        XCTAssertEqual(accepted, [true, false, false, false, true, true, false])
    }

    func testDebouncerMeasuresFromTheLastAcceptedEventAndResets() {
        var debouncer = Debouncer(interval: .milliseconds(50))
        XCTAssertTrue(debouncer.accept(at: .milliseconds(0)))
        // Rejected events do not extend the window (no endless suppression of a noisy line).
        for t in stride(from: 10, through: 40, by: 10) { XCTAssertFalse(debouncer.accept(at: .milliseconds(t))) }
        XCTAssertTrue(debouncer.accept(at: .milliseconds(50)))
        debouncer.reset()
        XCTAssertTrue(debouncer.accept(at: .milliseconds(51)))
        var none = Debouncer(interval: .zero)
        XCTAssertTrue(none.accept(at: .seconds(1)))
        XCTAssertTrue(none.accept(at: .seconds(1)), "a zero interval accepts every event")
    }
}
