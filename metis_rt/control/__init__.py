"""Control plane: pure command validation (``commands``) and the aiomqtt shell (``mqtt``).

Only the pure part is re-exported here, so importing the package never imports aiomqtt.
"""

from metis_rt.control.commands import (
    BrokerConfig,
    BrokerUrlError,
    Command,
    CommandError,
    SetBypass,
    SetMix,
    SetSteps,
    SetTask,
    SetVoice,
    Topics,
    parse_broker_url,
    parse_command,
)

__all__ = [
    "BrokerConfig",
    "BrokerUrlError",
    "Command",
    "CommandError",
    "SetBypass",
    "SetMix",
    "SetSteps",
    "SetTask",
    "SetVoice",
    "Topics",
    "parse_broker_url",
    "parse_command",
]
