import StorkCore

// MARK: - Rules that reload
//
// The gateway polls its rules file; each poll hands the file as it is now to a `ReloadableRules`, which decides:
// the same bytes as last time → nothing to do; new bytes that parse → swap to them; new bytes that do not parse (or
// a file that cannot be read) → keep the rules in force and record why. A mistake in an edited file therefore never
// opens or closes anything: the last good rules stay until a good file replaces them.

/// When and how a file was last changed, as the file system reports it (for status pages and logs).
public struct RulesFileStamp: Sendable, Hashable, CustomStringConvertible {
    /// Modification time in nanoseconds since 1970.
    public var modified: Int64
    public var size: Int

    public init(modified: Int64, size: Int) {
        self.modified = modified
        self.size = size
    }

    public var description: String { "\(self.size) bytes, modified \(Double(self.modified) / 1e9) s after 1970" }
}

/// The rules file as one poll found it.
public struct RulesFileSnapshot: Sendable, Hashable {
    /// The file's contents, or why it could not be read (missing, no permission).
    public var contents: Result<[UInt8], StorkError>
    /// Nil when the file could not be read.
    public var stamp: RulesFileStamp?

    public init(contents: [UInt8], stamp: RulesFileStamp?) {
        self.contents = .success(contents)
        self.stamp = stamp
    }

    public init(unreadable error: StorkError) {
        self.contents = .failure(error)
        self.stamp = nil
    }
}

/// What a poll did.
public enum RulesReloadAction: Sendable, Hashable {
    /// The file is as it was when last considered.
    case unchanged
    /// New rules are in force.
    case reloaded
    /// The file changed but is unusable; the rules in force stay, and `lastError` says why.
    case keptPrevious(StorkError)
}

/// The permission rules in force and the file they came from; a pure value the watcher keeps behind a lock.
public struct ReloadableRules: Sendable {
    /// The rules in force (none, i.e. deny everything, until a file loads).
    public private(set) var rules: PermissionRules
    /// Why the newest version of the file is not in force; nil when it is.
    public private(set) var lastError: StorkError?
    /// The stamp of the version in force.
    public private(set) var loadedStamp: RulesFileStamp?
    /// How many times rules have been swapped in (the first load counts).
    public private(set) var generation: Int

    /// The bytes last considered, valid or not: the same bytes are not parsed (or reported) again.
    private var lastContents: [UInt8]?
    private var lastFailure: StorkError?
    private let decode: @Sendable ([UInt8]) throws -> JSONValue

    /// - Parameter decode: turns the file's bytes into its document (YAML or JSON); its errors are reported as they are.
    public init(decode: @escaping @Sendable ([UInt8]) throws -> JSONValue) {
        self.rules = PermissionRules([])
        self.lastError = nil
        self.loadedStamp = nil
        self.generation = 0
        self.lastContents = nil
        self.lastFailure = nil
        self.decode = decode
    }

    /// Considers the file as a poll found it.
    public mutating func onSnapshot(_ snapshot: RulesFileSnapshot) -> RulesReloadAction {
        let contents: [UInt8]
        switch snapshot.contents {
        case .failure(let error):
            // A file that is briefly missing (an editor or a deploy replacing it) keeps the rules in force.
            self.lastContents = nil
            if self.lastFailure == error { return .unchanged }
            self.lastFailure = error
            self.lastError = error
            return .keptPrevious(error)
        case .success(let bytes):
            contents = bytes
        }
        if contents == self.lastContents {
            if self.lastError == nil { self.loadedStamp = snapshot.stamp ?? self.loadedStamp }
            return .unchanged
        }
        self.lastContents = contents
        self.lastFailure = nil
        do {
            let document: JSONValue
            do {
                document = try self.decode(contents)
            } catch let error as StorkError {
                throw error
            } catch {
                throw StorkError(.invalidInput, "permissions: the file is not valid: \(error)", underlying: error)
            }
            let rules = try PermissionRules(document: document)
            self.rules = rules
            self.lastError = nil
            self.loadedStamp = snapshot.stamp
            self.generation += 1
            return .reloaded
        } catch {
            let failure =
                (error as? StorkError) ?? StorkError(.invalidInput, "permissions: \(error)", underlying: error)
            self.lastError = failure
            return .keptPrevious(failure)
        }
    }
}
