"""The topics a room's participants and the appliance talk on: the agent's side (agent/session.py, the worker's
agent/redispatch.py) and the participants' (appliance/chatclient.py, the web console's page) name them here once."""

CHAT_TOPIC = "lk.chat"  # a participant's typed line (livekit-agents' own topic for text input)
REPLY_TOPIC = "lk.transcription"  # the agent's replies and the turns it transcribed (livekit-agents' own)
# Tells a sender what became of its line: {"stream_id", "message_id"} once stored, {"stream_id", "error"} if not.
ACK_TOPIC = "appliance.ack"
# The worker tells a room that its agent died and what comes: {"state": "redispatching" or "given_up", "agent",
# "cause"}. LiveKit itself tells the others that a participant left only seconds later, in a batch.
STATE_TOPIC = "appliance.state"
