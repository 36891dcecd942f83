import Foundation
import StorkCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Errors

/// An `errno` with its text, the underlying cause of the file store's `StorkError`s.
struct SystemCallError: Error, CustomStringConvertible {
    var operation: String
    var code: Int32

    var description: String { "\(self.operation): \(String(cString: strerror(self.code))) (errno \(self.code))" }
}

extension StorkError {
    /// `storeFailed` for a system call on `path` that set `errno` (read it right after the call).
    static func storeFailed(_ operation: String, path: String, errno code: Int32 = errno) -> StorkError {
        let cause = SystemCallError(operation: operation, code: code)
        return StorkError(.storeFailed, "\(operation) \(path): \(String(cString: strerror(code)))", underlying: cause)
    }
}

// MARK: - POSIX calls on paths and descriptors

/// The few system calls of the file store, each retried on `EINTR` and turned into a `StorkError` naming the path.
enum FileSystem {
    static func openFile(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        guard let descriptor = try Self.openFileIfExists(path, flags, mode: mode) else {
            throw StorkError.storeFailed("open", path: path, errno: ENOENT)
        }
        return descriptor
    }

    /// Opens a file, or returns nil when it (or its directory) does not exist.
    static func openFileIfExists(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32? {
        while true {
            let descriptor = open(path, flags | O_CLOEXEC, mode)
            if descriptor >= 0 { return descriptor }
            if errno == ENOENT { return nil }
            if errno != EINTR { throw StorkError.storeFailed("open", path: path) }
        }
    }

    static func closeFile(_ descriptor: Int32) {
        _ = close(descriptor)
    }

    /// Writes all of `bytes` at `offset`.
    static func writeFile(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws
    {
        var written = 0
        while written < bytes.count {
            let result = pwrite(
                descriptor,
                bytes.baseAddress! + written,
                bytes.count - written,
                off_t(offset) + off_t(written)
            )
            if result < 0 {
                if errno == EINTR { continue }
                throw StorkError.storeFailed("write", path: path)
            }
            written += result
        }
    }

    /// Reads up to `count` bytes at `offset` into `buffer`; fewer only at the end of the file. Returns how many.
    static func readFile(
        _ descriptor: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        count: Int,
        at offset: UInt64,
        path: String
    ) throws -> Int {
        precondition(count <= buffer.count, "read of \(count) bytes into a buffer of \(buffer.count)")
        var done = 0
        while done < count {
            let result = pread(descriptor, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            if result < 0 {
                if errno == EINTR { continue }
                throw StorkError.storeFailed("read", path: path)
            }
            if result == 0 { break }
            done += result
        }
        return done
    }

    static func syncFile(_ descriptor: Int32, path: String) throws {
        while fsync(descriptor) != 0 {
            if errno != EINTR { throw StorkError.storeFailed("fsync", path: path) }
        }
    }

    static func truncateFile(_ descriptor: Int32, to size: UInt64, path: String) throws {
        while ftruncate(descriptor, off_t(size)) != 0 {
            if errno != EINTR { throw StorkError.storeFailed("truncate", path: path) }
        }
    }

    static func fileSize(_ descriptor: Int32, path: String) throws -> UInt64 {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw StorkError.storeFailed("stat", path: path) }
        return UInt64(status.st_size)
    }

    /// Makes the names created, renamed or removed in `directory` durable.
    static func syncDirectory(_ directory: String) throws {
        let descriptor = try Self.openFile(directory, O_RDONLY | O_DIRECTORY)
        defer { Self.closeFile(descriptor) }
        try Self.syncFile(descriptor, path: directory)
    }

    static func renameFile(_ from: String, to: String) throws {
        guard rename(from, to) == 0 else { throw StorkError.storeFailed("rename to \(to)", path: from) }
    }

    /// Removes a file; a file that is already gone is not an error.
    static func removeFile(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw StorkError.storeFailed("unlink", path: path) }
    }

    static func createDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else { throw StorkError.storeFailed("mkdir", path: path) }
    }

    static func contentsOfDirectory(_ path: String) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw StorkError(.storeFailed, "list \(path)", underlying: error)
        }
    }

    /// Reads a whole (small) file, or nil when it does not exist.
    static func contents(of path: String) throws -> [UInt8]? {
        guard let descriptor = try Self.openFileIfExists(path, O_RDONLY) else { return nil }
        defer { Self.closeFile(descriptor) }
        let size = Int(try Self.fileSize(descriptor, path: path))
        var bytes = [UInt8](repeating: 0, count: size)
        let count = try bytes.withUnsafeMutableBytes {
            try Self.readFile(descriptor, into: $0, count: size, at: 0, path: path)
        }
        return Array(bytes.prefix(count))
    }

    /// Replaces `path` with `bytes` so that a crash leaves either the old or the new content: write a temporary file,
    /// (optionally) fsync it, rename it over `path`, (optionally) fsync the directory.
    static func writeAtomically(_ bytes: [UInt8], to path: String, directory: String, durable: Bool) throws {
        let temporary = path + ".tmp"
        let descriptor = try Self.openFile(temporary, O_WRONLY | O_CREAT | O_TRUNC)
        do {
            try bytes.withUnsafeBytes { try Self.writeFile(descriptor, $0, at: 0, path: temporary) }
            if durable { try Self.syncFile(descriptor, path: temporary) }
            Self.closeFile(descriptor)
        } catch {
            Self.closeFile(descriptor)
            try? Self.removeFile(temporary)
            throw error
        }
        try Self.renameFile(temporary, to: path)
        if durable { try Self.syncDirectory(directory) }
    }
}

// MARK: - Directory lock

/// An exclusive `flock` on a file in the store's directory, so that a second process (or a second store in this
/// one) opening the same stream fails clearly instead of corrupting it. Released by `close` or when the process dies.
struct DirectoryLock {
    let descriptor: Int32

    init(directory: String) throws {
        let path = directory + "/LOCK"
        let descriptor = try FileSystem.openFile(path, O_RDWR | O_CREAT)
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            FileSystem.closeFile(descriptor)
            if code == EWOULDBLOCK {
                throw StorkError(.storeFailed, "\(directory) is in use by another store (LOCK is held)")
            }
            throw StorkError.storeFailed("flock", path: path, errno: code)
        }
        self.descriptor = descriptor
    }

    func release() {
        FileSystem.closeFile(self.descriptor)
    }
}
