//! Replays a Tapio recording file as a source
