// GPIO wrapper: these machines have no GPIO chips (and no gpio-sim/gpio-mockup modules), so the
// hardware path is checked through its error reporting. Debouncing is the device's
// PressDetector (DeviceTests/ButtonTests), on synthetic time.
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
}
