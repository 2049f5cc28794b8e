"""Sentinel ids and placeholder strings shared by the model and the prompt builder (spec 1, 11.3).

Sentinels are never embedded: they mark where one media item's feature rows go. A video is one
image sentinel with modality "video" (ORIG); audio has its own sentinel. The audio front end's
geometry (Whisper's, openai/whisper whisper/audio.py) lives here too: processing and layout share it.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
AUDIO_TOKEN_INDEX = -300

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
AUDIO_PLACEHOLDER = "<audio>"

# placeholder string -> sentinel id
SENTINEL_BY_PLACEHOLDER = {
    IMAGE_PLACEHOLDER: IMAGE_TOKEN_INDEX,
    VIDEO_PLACEHOLDER: IMAGE_TOKEN_INDEX,
    AUDIO_PLACEHOLDER: AUDIO_TOKEN_INDEX,
}
# modality -> sentinel id
SENTINEL_BY_MODALITY = {"image": IMAGE_TOKEN_INDEX, "video": IMAGE_TOKEN_INDEX, "audio": AUDIO_TOKEN_INDEX}
PLACEHOLDER_BY_MODALITY = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER}
MODALITY_BY_PLACEHOLDER = {p: m for m, p in PLACEHOLDER_BY_MODALITY.items()}

# Whisper's audio front end: 16 kHz mono, 30 s chunks, 25 ms windows every 10 ms.
AUDIO_SAMPLE_RATE = 16000  # Hz
AUDIO_CHUNK_SECONDS = 30
AUDIO_CHUNK_SAMPLES = AUDIO_SAMPLE_RATE * AUDIO_CHUNK_SECONDS  # 480000 samples per chunk
AUDIO_N_FFT = 400  # samples per STFT window (25 ms)
AUDIO_HOP_LENGTH = 160  # samples between mel frames (10 ms)
AUDIO_CHUNK_FRAMES = AUDIO_CHUNK_SAMPLES // AUDIO_HOP_LENGTH  # 3000 mel frames per chunk
