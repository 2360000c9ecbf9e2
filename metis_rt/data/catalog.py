"""What the evaluation set is made of: the Debian packages, the voices in them and the recorded noises.

Everything here is real recorded audio (nobody synthesised the speech). Licences are as stated in
``/usr/share/doc/<package>/copyright``; the manifest repeats them per source.

Speakers and voices: a *voice* is one speaker in one language in one package (``allison-en``); a *speaker*
is the person (Allison Smith recorded both the English and the Mexican Spanish Asterisk prompts, so
``allison-en`` and ``allison-es`` share the speaker ``allison``). A target and its interferer, or a VC source
and its reference, are always different speakers.

Fish Fillets (``fillets-ng-data-cs`` / ``-nl``) names its dialogue files ``<level>-<who>-<line>.ogg``:
``m`` is the small fish (Czech *malá*), ``v`` the big fish (*velká*), each voiced by one actor per language.
The English ``fillets-ng-data`` holds only sound effects and a few character grunts (the English game is
subtitled, not dubbed), so it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

ASTERISK_SOUNDS = "/usr/share/asterisk/sounds"
FILLETS_SOUNDS = "/usr/share/games/fillets-ng/sound"
# Asterisk files that are not speech: the silence/ folder and signalling tones.
ASTERISK_NOT_SPEECH = r"(^|/)silence/|(^|/)(beep|beeperr|ascending-2tone|descending-2tone)\.g722$"
FILLETS_SMALL_FISH = "[a-z0-9]*-m-*.ogg"
FILLETS_BIG_FISH = "[a-z0-9]*-v-*.ogg"


@dataclass(frozen=True)
class DebianSource:
    """One Debian package directory that audio is taken from."""

    name: str  # short id used in the manifest
    package: str
    path: str  # absolute directory as installed
    licence: str  # as stated in /usr/share/doc/<package>/copyright
    description: str
    probe: str  # glob under `path` that matches files only when the package is installed


@dataclass(frozen=True)
class Voice:
    """One speaker in one language: the files matching `pattern` under the source's directory."""

    id: str
    speaker: str
    language: str  # ISO 639-1
    source: str  # DebianSource.name
    pattern: str  # glob relative to the source directory
    exclude: str = ""  # regex on the path relative to the source directory; matching files are skipped
    reference_only: bool = False  # too little speech for anything but a VC target-voice reference


@dataclass(frozen=True)
class NoiseFiles:
    """Recorded (non-speech) noise: the files matching `pattern` under the source's directory."""

    id: str
    source: str
    pattern: str
    exclude: str = ""


SOURCES: tuple[DebianSource, ...] = (
    DebianSource(
        "asterisk-en",
        "asterisk-core-sounds-en-g722",
        f"{ASTERISK_SOUNDS}/en_US_f_Allison",
        "CC-BY-SA-3.0",
        "US English telephony prompts read by Allison Smith, G.722 (16 kHz)",
        "**/*.g722",
    ),
    DebianSource(
        "asterisk-es",
        "asterisk-core-sounds-es-g722",
        f"{ASTERISK_SOUNDS}/es_MX_f_Allison",
        "CC-BY-SA-3.0",
        "Mexican Spanish telephony prompts read by Allison Smith, G.722 (16 kHz)",
        "**/*.g722",
    ),
    DebianSource(
        "asterisk-fr",
        "asterisk-core-sounds-fr-g722",
        f"{ASTERISK_SOUNDS}/fr_CA_f_June",
        "CC-BY-SA-3.0",
        "Canadian French telephony prompts read by June Wallack, G.722 (16 kHz)",
        "**/*.g722",
    ),
    DebianSource(
        "asterisk-it",
        "asterisk-core-sounds-it-g722",
        f"{ASTERISK_SOUNDS}/it_IT_m_Carlo",
        "CC-BY-3.0",
        "Italian telephony prompts read by Carlo Flora, G.722 (16 kHz)",
        "**/*.g722",
    ),
    DebianSource(
        "asterisk-ru",
        "asterisk-core-sounds-ru-g722",
        f"{ASTERISK_SOUNDS}/ru_RU_f_IvrvoiceRU",
        "CC-BY-3.0",
        "Russian telephony prompts (female voice, ivrvoice.ru), G.722 (16 kHz)",
        "**/*.g722",
    ),
    DebianSource(
        "fillets-cs",
        "fillets-ng-data-cs",
        FILLETS_SOUNDS,
        "GPL-2",
        "Fish Fillets NG Czech dialogue (two fish, one actor each), Ogg Vorbis 22.05 kHz",
        "*/cs/*.ogg",
    ),
    DebianSource(
        "fillets-nl",
        "fillets-ng-data-nl",
        FILLETS_SOUNDS,
        "GPL-2",
        "Fish Fillets NG Dutch dialogue (two fish, one actor each), Ogg Vorbis 22.05 kHz stereo",
        "*/nl/*.ogg",
    ),
    DebianSource(
        "alsa",
        "alsa-utils",
        "/usr/share/sounds/alsa",
        "GPL-2",
        "ALSA speaker-test channel names read by a male voice, WAV 48 kHz",
        "*.wav",
    ),
    DebianSource(
        "moh",
        "asterisk-moh-opsound-g722",
        "/usr/share/asterisk/moh",
        "CC-BY-SA-3.0",
        "Asterisk music on hold (five tracks), G.722 (16 kHz)",
        "*.g722",
    ),
    DebianSource(
        "freedesktop",
        "sound-theme-freedesktop",
        "/usr/share/sounds/freedesktop/stereo",
        "CC-BY-SA-3.0, CC-BY-3.0, GPL-2+, GPL-2 (per file, see the copyright file)",
        "freedesktop.org event sounds (bells, phones, alarms), Ogg Vorbis 48 kHz",
        "*.oga",
    ),
)

VOICES: tuple[Voice, ...] = (
    Voice("allison-en", "allison", "en", "asterisk-en", "**/*.g722", ASTERISK_NOT_SPEECH),
    Voice("allison-es", "allison", "es", "asterisk-es", "**/*.g722", ASTERISK_NOT_SPEECH),
    Voice("june-fr", "june", "fr", "asterisk-fr", "**/*.g722", ASTERISK_NOT_SPEECH),
    Voice("carlo-it", "carlo", "it", "asterisk-it", "**/*.g722", ASTERISK_NOT_SPEECH),
    Voice("ivrvoice-ru", "ivrvoice", "ru", "asterisk-ru", "**/*.g722", ASTERISK_NOT_SPEECH),
    Voice("fishsmall-cs", "fishsmall-cs", "cs", "fillets-cs", f"*/cs/{FILLETS_SMALL_FISH}"),
    Voice("fishbig-cs", "fishbig-cs", "cs", "fillets-cs", f"*/cs/{FILLETS_BIG_FISH}"),
    Voice("fishsmall-nl", "fishsmall-nl", "nl", "fillets-nl", f"*/nl/{FILLETS_SMALL_FISH}"),
    Voice("fishbig-nl", "fishbig-nl", "nl", "fillets-nl", f"*/nl/{FILLETS_BIG_FISH}"),
    # Nine short clips (about 7 s of speech in all): enough for two utterances, used as VC references only.
    Voice("alsa-en", "alsa", "en", "alsa", "*.wav", r"^Noise\.wav$", reference_only=True),
)

RECORDED_NOISES: tuple[NoiseFiles, ...] = (
    NoiseFiles("music", "moh", "*.g722"),
    # The audio-channel-* files are speech (the ALSA voice) and audio-test-signal is a test tone: skipped.
    NoiseFiles("events", "freedesktop", "*.oga", r"^audio-(channel|test)"),
)

# Speakers that training (a later issue) must never use, in any recording. Fixed, not drawn from the seed, so
# that a training data loader can exclude them without reading a particular manifest. One speaker whose whole
# language is then unseen (Russian) and one whose language is seen through another actor (Dutch big fish).
HELDOUT_SPEAKERS: tuple[str, ...] = ("ivrvoice", "fishbig-nl")


def source_by_name(name: str) -> DebianSource:
    for source in SOURCES:
        if source.name == name:
            return source
    raise KeyError(f"unknown source {name!r}; known: {', '.join(s.name for s in SOURCES)}")


def voice_by_id(voice_id: str) -> Voice:
    for voice in VOICES:
        if voice.id == voice_id:
            return voice
    raise KeyError(f"unknown voice {voice_id!r}; known: {', '.join(v.id for v in VOICES)}")
