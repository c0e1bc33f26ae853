//! SKELETON — etcd's v3 API over its JSON gateway (HTTP/1.1), no protobuf compiler needed.
