// A call to the agent from the browser: the plain call protocol (telephony/PROTOCOL.md) over /ws/call.
// Microphone audio is resampled to 16 kHz PCM16 and streamed; agent audio segments are played in order,
// and what was actually played is reported back (so the agent knows what the caller heard on a barge-in).
(function () {
  const RATE = 16000;
  const caller = document.currentScript.dataset.caller;
  const button = document.getElementById("call-button");
  const stateLabel = document.getElementById("call-state");
  const linesBox = document.getElementById("call-lines");
  let ws = null, ctx = null, mic = null, processor = null, current = null, playhead = 0;
  const segments = new Map();  // mark -> {mark, start, end, sources, acked, timer}

  const setState = (text) => { stateLabel.textContent = text; };
  const send = (message) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message)); };

  function addLine(role, text) {
    const line = document.createElement("div");
    line.className = "line " + role;
    line.textContent = (role === "caller" ? "You: " : role === "agent" ? "Agent: " : "! ") + text;
    linesBox.append(line);
  }

  async function start() {
    button.disabled = true;
    setState("connecting");
    ctx = new AudioContext();
    await ctx.resume();
    try {
      mic = await navigator.mediaDevices.getUserMedia(
        {audio: {echoCancellation: true, noiseSuppression: false, autoGainControl: false}});
    } catch (err) {
      setState("no microphone: " + err.message);
      button.disabled = false;
      return;
    }
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/call");
    ws.binaryType = "arraybuffer";
    ws.onopen = () => send({type: "start", caller: caller, sample_rate: RATE});
    ws.onmessage = receive;
    ws.onclose = ended;
    button.textContent = "Hang up";
    button.disabled = false;
  }

  function receive(message) {
    if (typeof message.data !== "string") { play(new Int16Array(message.data)); return; }
    const event = JSON.parse(message.data);
    if (event.type === "ready") { streamMicrophone(); setState("in call " + event.call_id.slice(0, 8)); }
    else if (event.type === "transcript" && event.final) addLine(event.role, event.text);
    else if (event.type === "agent_audio_start") {
      current = {mark: event.mark, start: null, end: null, sources: [], acked: false, timer: null};
      segments.set(event.mark, current);
    } else if (event.type === "agent_audio_end" && current && current.mark === event.mark) {
      ackWhenPlayed(current);
      current = null;
    } else if (event.type === "clear") stopPlayback();
    else if (event.type === "transfer") setState("handed to a person");
    else if (event.type === "error") addLine("error", event.message);
  }

  function play(pcm) {
    if (!current) return;  // audio of a segment cut by a barge-in
    const buffer = ctx.createBuffer(1, pcm.length, RATE);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const at = Math.max(ctx.currentTime + 0.03, playhead);
    source.start(at);
    playhead = at + buffer.duration;
    if (current.start === null) current.start = at;
    current.end = playhead;
    current.sources.push(source);
  }

  function ack(segment, seconds) {
    if (segment.acked) return;
    segment.acked = true;
    clearTimeout(segment.timer);
    segments.delete(segment.mark);
    send({type: "playback", mark: segment.mark, played_ms: Math.max(0, Math.round(seconds * 1000))});
  }

  function ackWhenPlayed(segment) {
    if (segment.start === null) { ack(segment, 0); return; }
    const wait = Math.max(0, segment.end - ctx.currentTime);
    segment.timer = setTimeout(() => ack(segment, segment.end - segment.start), wait * 1000);
  }

  function stopPlayback() {  // barge-in: stop now, report what each unacknowledged segment played
    const now = ctx.currentTime;
    for (const segment of [...segments.values()]) {
      segment.sources.forEach((source) => { try { source.stop(); } catch (e) { /* not started */ } });
      const played = segment.start === null || now < segment.start ? 0 : Math.min(now, segment.end) - segment.start;
      ack(segment, played);
    }
    current = null;
    playhead = now;
  }

  function streamMicrophone() {
    const input = ctx.createMediaStreamSource(mic);
    processor = ctx.createScriptProcessor(2048, 1, 1);
    const step = ctx.sampleRate / RATE;
    let position = 0, previous = 0;  // resampler state carried across buffers
    processor.onaudioprocess = (event) => {
      const x = event.inputBuffer.getChannelData(0);
      const out = [];
      while (position <= x.length - 1) {  // linear interpolation; index -1 is the last buffer's last sample
        const i = Math.floor(position), f = position - i;
        const a = i < 0 ? previous : x[i];
        out.push(a + (x[i + 1] - a) * f);
        position += step;
      }
      position -= x.length;
      previous = x[x.length - 1];
      const pcm = new Int16Array(out.length);
      for (let i = 0; i < out.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(out[i] * 32767)));
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(pcm.buffer);
    };
    input.connect(processor);
    processor.connect(ctx.destination);  // a script processor only runs while connected; it outputs silence
  }

  function hangUp() { send({type: "stop"}); }

  function ended() {
    if (processor) processor.disconnect();
    if (mic) mic.getTracks().forEach((track) => track.stop());
    segments.forEach((segment) => clearTimeout(segment.timer));
    segments.clear();
    ws = null;
    setState("call ended");
    button.textContent = "Start call";
  }

  button.addEventListener("click", () => (ws ? hangUp() : start()));
})();
