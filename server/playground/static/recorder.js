// A microphone recording as a 16 kHz mono 16-bit WAV file (the server's `input_audio` takes wav;
// the browser's own recording formats, webm/opus, it does not). Recorded with MediaRecorder,
// decoded and resampled with Web Audio, written as WAV here.

const RATE = 16000;

export class MicRecorder {
  constructor() {
    this.recorder = null;
    this.chunks = [];
  }

  get isRecording() {
    return this.recorder !== null;
  }

  async start() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.recorder = new MediaRecorder(stream);
    this.recorder.addEventListener("dataavailable", (e) => this.chunks.push(e.data));
    this.recorder.start();
  }

  // Resolves to a File (audio/wav) with what was recorded.
  stop() {
    const recorder = this.recorder;
    this.recorder = null;
    return new Promise((resolve, reject) => {
      recorder.addEventListener("stop", async () => {
        recorder.stream.getTracks().forEach((t) => t.stop());
        try {
          const blob = new Blob(this.chunks, { type: recorder.mimeType });
          const samples = await toMono16k(await blob.arrayBuffer());
          const stamp = new Date().toISOString().slice(11, 19).replaceAll(":", "");
          resolve(new File([wav(samples)], `recording-${stamp}.wav`, { type: "audio/wav" }));
        } catch (error) {
          reject(error);
        }
      }, { once: true });
      recorder.stop();
    });
  }
}

async function toMono16k(buffer) {
  const context = new AudioContext();
  try {
    const decoded = await context.decodeAudioData(buffer);
    const length = Math.max(1, Math.ceil(decoded.duration * RATE));
    const offline = new OfflineAudioContext(1, length, RATE);
    const source = offline.createBufferSource();
    source.buffer = decoded;
    source.connect(offline.destination);
    source.start();
    return (await offline.startRendering()).getChannelData(0);
  } finally {
    context.close();
  }
}

export function wav(samples) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, RATE, true);
  view.setUint32(28, RATE * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return view.buffer;
}
