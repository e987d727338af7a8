// The console page: joins a room with a token from the box (/api/token) through LiveKit's JavaScript SDK
// (livekit-client, served from the box), sends lines on lk.chat, shows each line's acknowledgement
// (appliance.ack), the agent's replies and spoken turns (lk.transcription), the participants and the agent's state.
"use strict";
(() => {
  const LK = window.LivekitClient;
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const session = document.querySelector('meta[name="session"]').dataset;
  const sent = new Map(); // stream id of a line we sent -> its <li>
  const acks = new Map(); // acks that came before sendText returned the stream id
  const segments = new Map(); // transcription segment id -> its <li> (interim text is replaced by the final one)
  let room = null;
  let serving = null; // identity of the agent serving the room, as last seen (null: none seen yet)
  let givenUp = false; // the appliance stopped dispatching this room: its agent died too often
  const gone = new Set(); // agents the appliance said died (LiveKit lists them for some seconds more)
  const resumedNoted = new Set(); // agents whose resumption the transcript already tells
  let micOn = false;

  if (session.kind === "link") {
    $("room").value = session.room;
    $("identity").value = session.identity;
    $("room").readOnly = $("identity").readOnly = true;
  } else if (!$("room").value) {
    $("room").value = new URLSearchParams(location.search).get("room") || "";
  }

  const participantsOf = () => (room ? [...room.remoteParticipants.values()] : []);
  const isAgent = (p) => p.isAgent || p.kind === LK.ParticipantKind.AGENT;
  const byIdentity = (identity) => participantsOf().find((p) => p.identity === identity);

  function ownerOfTrack(sid) {
    for (const p of [room.localParticipant, ...participantsOf()]) {
      if (p.trackPublications.has(sid)) return p;
    }
    return null;
  }

  function addLine(who, text, kind) {
    const li = document.createElement("li");
    li.className = kind;
    li.dataset.identity = who;
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who + ":";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(name, body);
    $("transcript").append(li);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  function showAck(li, ack) {
    const note = document.createElement("span");
    if (ack.message_id) {
      note.className = "ack";
      note.textContent = "stored " + ack.message_id;
      li.dataset.ack = ack.message_id;
    } else {
      note.className = "refused";
      note.textContent = "not stored: " + ack.error;
      li.dataset.refused = ack.error;
    }
    li.append(note);
  }

  function note(text, kind) {
    const li = document.createElement("li");
    li.className = "note";
    li.dataset.note = kind;
    li.textContent = text;
    $("transcript").append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  // The newest live agent serves: a re-dispatched agent may join before LiveKit tells that its predecessor left.
  const newestAgent = () =>
    participantsOf()
      .filter((p) => isAgent(p) && !gone.has(p.identity))
      .sort((a, b) => (a.joinedAt?.getTime() ?? 0) - (b.joinedAt?.getTime() ?? 0))
      .at(-1);
  const hasResumed = (agent) => agent.attributes["appliance.resumed"] === "true";

  function onAgentLeft(participant) {
    if (isAgent(participant) && participant.identity === serving && !gone.has(serving) && !newestAgent()) {
      note(`The agent ${participant.identity} left: the appliance will dispatch one again…`, "left");
    }
    refresh();
  }

  // What the appliance tells the room when its agent died (agent/redispatch.py, sent by the server: no sender).
  function onApplianceState(payload, participant, kind, topic) {
    if (topic !== "appliance.state" || participant) return;
    const told = JSON.parse(new TextDecoder().decode(payload));
    gone.add(told.agent);
    if (told.state === "given_up") {
      givenUp = true;
      note(`The agent ${told.agent} died (${told.cause}) too often: the appliance stopped dispatching it here.`, "given_up");
    } else {
      note(`The agent ${told.agent} died (${told.cause}): the appliance is dispatching it again…`, "redispatching");
    }
    refresh();
  }

  function refresh() {
    const agent = newestAgent();
    const state = $("agent-state");
    if (agent) {
      serving = agent.identity;
      givenUp = false;
      const resumed = hasResumed(agent);
      if (resumed && !resumedNoted.has(agent.identity)) {
        resumedNoted.add(agent.identity);
        note(`The agent ${agent.identity} resumed this room's conversation where it stopped.`, "resumed");
      }
      state.dataset.state = resumed ? "resumed" : "present";
      state.textContent = resumed
        ? "The agent is here; it resumed this room's conversation where it stopped."
        : "The agent is here.";
      state.className = "state";
    } else {
      state.dataset.state = givenUp ? "given_up" : serving ? "redispatching" : "absent";
      state.textContent = givenUp
        ? "The agent died too often in this room: the appliance stopped dispatching it (see its logs)."
        : serving
          ? "The agent left: the appliance is dispatching it again…"
          : "The agent is absent: waiting for the appliance to dispatch one…";
      state.className = "state warn";
    }
    const list = $("participants");
    list.replaceChildren();
    for (const p of [room.localParticipant, ...participantsOf()]) {
      const li = document.createElement("li");
      const role = p === room.localParticipant ? " (you)" : isAgent(p) ? (gone.has(p.identity) ? " (agent, died)" : " (agent)") : "";
      li.textContent = p.identity + role;
      list.append(li);
    }
  }

  async function onTranscription(reader, from) {
    const attributes = reader.info.attributes || {};
    const track = attributes["lk.transcribed_track_id"];
    const owner = track ? ownerOfTrack(track) : null;
    // A spoken turn is transcribed by the agent under the speaker's track; the agent's own text is its reply.
    const who = owner ? owner.identity : from.identity;
    const speaker = owner || byIdentity(who);
    const kind = speaker && speaker !== room.localParticipant && isAgent(speaker) ? "agent" : "human";
    const text = await reader.readAll();
    const segment = attributes["lk.segment_id"];
    const known = segment && segments.get(segment);
    if (known) {
      known.querySelector(".text").textContent = text;
    } else {
      const li = addLine(who, text, kind);
      if (segment) segments.set(segment, li);
    }
  }

  async function join(event) {
    event.preventDefault();
    $("error").textContent = "";
    const response = await fetch("/api/token", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ room: $("room").value, identity: $("identity").value }),
    });
    const granted = await response.json();
    if (!response.ok) {
      $("error").textContent = granted.error;
      return;
    }
    room = new LK.Room();
    room.registerTextStreamHandler("lk.transcription", onTranscription);
    room.registerTextStreamHandler("lk.chat", async (reader, from) => {
      addLine(from.identity, await reader.readAll(), "human");
    });
    room.registerTextStreamHandler("appliance.ack", async (reader) => {
      const ack = JSON.parse(await reader.readAll());
      const li = sent.get(ack.stream_id);
      if (li) showAck(li, ack);
      else acks.set(ack.stream_id, ack);
    });
    room
      .on(LK.RoomEvent.ParticipantConnected, refresh)
      .on(LK.RoomEvent.ParticipantDisconnected, onAgentLeft)
      .on(LK.RoomEvent.ParticipantAttributesChanged, refresh)
      .on(LK.RoomEvent.DataReceived, onApplianceState)
      .on(LK.RoomEvent.TrackSubscribed, (track, publication, participant) => {
        if (track.kind !== LK.Track.Kind.Audio) return;
        const audio = track.attach();
        audio.dataset.identity = participant.identity;
        document.body.append(audio);
      })
      .on(LK.RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((el) => el.remove()))
      .on(LK.RoomEvent.Disconnected, () => {
        $("error").textContent = "Disconnected from the room.";
      });
    try {
      await room.connect(granted.url, granted.token);
    } catch (error) {
      $("error").textContent = "Could not join: " + error.message;
      return;
    }
    $("join").hidden = true;
    $("call").hidden = false;
    $("room-title").textContent = `Room ${granted.room}, as ${granted.identity}`;
    refresh();
    $("line").focus();
  }

  async function say(event) {
    event.preventDefault();
    const text = $("line").value.trim();
    if (!text || !room) return;
    $("line").value = "";
    const li = addLine(room.localParticipant.identity, text, "me");
    const info = await room.localParticipant.sendText(text, { topic: "lk.chat" });
    li.dataset.streamId = info.id;
    sent.set(info.id, li);
    if (acks.has(info.id)) showAck(li, acks.get(info.id));
  }

  async function toggleMic() {
    micOn = !micOn;
    await room.localParticipant.setMicrophoneEnabled(micOn);
    $("mic").textContent = micOn ? "Microphone on" : "Microphone off";
    $("mic").setAttribute("aria-pressed", String(micOn));
  }

  $("join").addEventListener("submit", join);
  $("join-button").disabled = false; // off until now: a click before this script ran would submit the form as is
  $("say").addEventListener("submit", say);
  $("mic").addEventListener("click", toggleMic);
  $("leave").addEventListener("click", async () => {
    if (room) await room.disconnect();
    location.reload();
  });
})();
