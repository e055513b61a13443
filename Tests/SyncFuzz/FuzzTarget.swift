// libFuzzer target for the sync codec; built and run by scripts/fuzz-codec (not a SwiftPM
// target). Every decoder gets the input; anything accepted must round-trip (SyncFuzzEntry).
import Sync

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    SyncFuzzEntry.decodeAll(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
