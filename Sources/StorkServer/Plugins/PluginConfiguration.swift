import StorkCore
import Yams

// MARK: - Typed configuration as plugin selections
//
// The built-in sources and handlers keep their typed cases (and the loader's precise errors); everything is built
// through the registry, so a registered type replaces a built-in one and a custom type uses the same syntax.

extension ServerConfiguration.SourceKind {
    /// The registry type and options of this source.
    public var selection: PluginSelection {
        switch self {
        case .file(let path, let reload):
            return PluginSelection(type: "file", options: ["path": .string(path), "reload": .bool(reload)])
        case .http(let url, let headers, let timeout):
            return PluginSelection(
                type: "http",
                options: [
                    "url": .string(url), "headers": .object(headers.mapValues { .string($0) }),
                    "timeout": .number(timeout.secondsDouble),
                ]
            )
        case .plugin(let selection):
            return selection
        }
    }
}

extension ServerConfiguration.Handler {
    /// The registry type and options of this handler.
    public var selection: PluginSelection {
        switch self {
        case .sidecar(let url, let timeout, let headers):
            return PluginSelection(
                type: "sidecar",
                options: [
                    "url": .string(url), "headers": .object(headers.mapValues { .string($0) }),
                    "timeout": .number(timeout.secondsDouble),
                ]
            )
        case .log:
            return PluginSelection(type: "log")
        case .plugin(let selection):
            return selection
        }
    }
}

// MARK: - Reading a selection from YAML

extension ConfigNode {
    /// Every key of a mapping, unchecked (a plugin checks its own options).
    func anyMapping() throws -> [String: ConfigNode] {
        guard case .mapping(let mapping) = self.node else { throw self.error("expected a mapping of keys") }
        var result: [String: ConfigNode] = [:]
        for (key, value) in mapping {
            guard let name = key.string else { throw self.error("keys must be strings") }
            guard result[name] == nil else { throw self.child(name, value).error("given twice") }
            result[name] = self.child(name, value)
        }
        return result
    }

    /// `NAME` or `{type: NAME, …options}`, where NAME is registered for `kind`; the keys in `excluding` are not
    /// options (the caller reads them). An unknown name is an error listing the known ones.
    func pluginSelection(
        _ kind: StorkPlugins.Kind,
        plugins: StorkPlugins,
        excluding: Set<String> = []
    ) throws -> PluginSelection {
        if case .scalar = self.node {
            let type = try self.string()
            guard plugins.types(kind).contains(type) else { throw self.error(plugins.unknown(kind, type).message) }
            return PluginSelection(type: type)
        }
        let fields = try self.anyMapping()
        guard let typeNode = fields["type"] else {
            throw self.error("missing 'type' (one of \(plugins.types(kind).joined(separator: ", ")))")
        }
        let type = try typeNode.string()
        guard plugins.types(kind).contains(type) else { throw typeNode.error(plugins.unknown(kind, type).message) }
        var options: [String: JSONValue] = [:]
        for (key, value) in fields where key != "type" && !excluding.contains(key) {
            options[key] = try value.json()
        }
        return PluginSelection(type: type, options: options)
    }
}
