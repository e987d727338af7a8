"""End-to-end tests against a real livekit-server and real WebRTC clients."""
