// Every channel's limits come with the protocol: importers of LorikeetProto see `Limits`,
// `TextRules` and `String.echoed()` without a second import.
@_exported public import LorikeetLimits
