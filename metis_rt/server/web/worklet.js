// AudioWorklet processors of the metis-rt web client (loaded with audioWorklet.addModule('/worklet.js')).
//
// capture-processor:  microphone (mono, AudioContext rate) -> fixed-size Float32Array blocks -> main thread.
// playback-processor: Float32Array blocks from the main thread -> a small jitter buffer -> speakers.

const DEFAULT_BLOCK_MS = 20;
const DEFAULT_PREBUFFER_MS = 100; // playback starts (and restarts after an underrun) once this much is queued
const DEFAULT_MAX_BUFFER_MS = 2000; // beyond this the oldest queued audio is dropped (and counted)
const REPORT_INTERVAL_MS = 100;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const blockMs = options.processorOptions?.blockMs ?? DEFAULT_BLOCK_MS;
    this.blockSamples = Math.max(128, Math.round((sampleRate * blockMs) / 1000));
    this.block = new Float32Array(this.blockSamples);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0]; // the node downmixes to one channel (channelCountMode "explicit")
    if (!channel) return true; // no input connected yet
    let offset = 0;
    while (offset < channel.length) {
      const n = Math.min(channel.length - offset, this.blockSamples - this.filled);
      this.block.set(channel.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.blockSamples) {
        this.port.postMessage(this.block, [this.block.buffer]); // hand the block over without copying
        this.block = new Float32Array(this.blockSamples);
        this.filled = 0;
      }
    }
    return true;
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.prebufferSamples = Math.round((sampleRate * (opts.prebufferMs ?? DEFAULT_PREBUFFER_MS)) / 1000);
    this.maxSamples = Math.round((sampleRate * (opts.maxBufferMs ?? DEFAULT_MAX_BUFFER_MS)) / 1000);
    this.reportEvery = Math.round((sampleRate * REPORT_INTERVAL_MS) / 1000);
    this.queue = []; // Float32Array chunks, oldest first
    this.head = 0; // read position inside queue[0]
    this.queued = 0; // samples waiting in the queue
    this.playing = false; // false while (re)filling up to the prebuffer
    this.draining = false; // the stream has ended: play what is left, an empty queue is no underrun
    this.underruns = 0; // times the queue ran dry while playing
    this.droppedSamples = 0; // overflow drops
    this.playedSamples = 0;
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.enqueue(event.data);
  }

  enqueue(data) {
    if (data === "drain") {
      this.draining = true;
      return;
    }
    this.queue.push(data);
    this.queued += data.length;
    while (this.queued > this.maxSamples) {
      // overload policy: drop the oldest audio so the delay stays bounded
      const oldest = this.queue.shift();
      const left = oldest.length - this.head;
      this.queued -= left;
      this.droppedSamples += left;
      this.head = 0;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && (this.queued >= this.prebufferSamples || (this.draining && this.queued > 0))) {
      this.playing = true;
    }
    let written = 0;
    if (this.playing) {
      while (written < out.length && this.queue.length) {
        const chunk = this.queue[0];
        const n = Math.min(out.length - written, chunk.length - this.head);
        out.set(chunk.subarray(this.head, this.head + n), written);
        written += n;
        this.head += n;
        if (this.head === chunk.length) {
          this.queue.shift();
          this.head = 0;
        }
      }
      this.queued -= written;
      this.playedSamples += written;
      if (written < out.length) {
        // the rest of this quantum stays silent; refill up to the prebuffer before playing again
        if (!this.draining) this.underruns += 1;
        this.playing = false;
      }
    }
    out.fill(0, written);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out); // mono to every output channel
    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      this.port.postMessage({
        bufferedMs: (this.queued * 1000) / sampleRate,
        underruns: this.underruns,
        droppedMs: (this.droppedSamples * 1000) / sampleRate,
        playedMs: (this.playedSamples * 1000) / sampleRate,
      });
    }
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
registerProcessor("playback-processor", PlaybackProcessor);
