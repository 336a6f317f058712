//! OCI runtime-spec view of DMS container domains (filled in by the namespaces issue).
