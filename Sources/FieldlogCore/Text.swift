// Text helpers the device-side modules need without full Foundation (see Threads.swift).

/// What `trimmed(_:)` removes at both ends.
public enum Blanks: Sendable {
    /// Spaces and tabs (Unicode white space that is not a line end).
    case spaces
    /// White space including line ends.
    case spacesAndNewlines
}

extension StringProtocol {
    /// The text without leading and trailing blanks, like Foundation's
    /// `trimmingCharacters(in: .whitespaces / .whitespacesAndNewlines)`.
    public func trimmed(_ blanks: Blanks = .spacesAndNewlines) -> String {
        let isBlank: (Character) -> Bool = blanks == .spaces ? { $0.isWhitespace && !$0.isNewline } : { $0.isWhitespace }
        guard let first = firstIndex(where: { !isBlank($0) }) else { return "" }
        let last = lastIndex(where: { !isBlank($0) })!
        return String(self[first...last])
    }
}
