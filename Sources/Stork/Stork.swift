@_exported import StorkCore
@_exported import StorkMembership
@_exported import StorkPlacement
@_exported import StorkResources
