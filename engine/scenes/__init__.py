"""Scenes: several characters sharing one conversation in a channel, each answering as itself."""
from engine.scenes.model import Scene, mentioned, next_speakers, parse_names, talkativeness
from engine.scenes.runner import Scenes, SceneTurn, Speech

__all__ = ["Scene", "SceneTurn", "Scenes", "Speech", "mentioned", "next_speakers", "parse_names", "talkativeness"]
