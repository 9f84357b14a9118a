"""Layer 3: one LightningModule per method, composed from blocks, objectives and metrics; and the
reward components an RL module takes (``rewards.py``: S-GRec's judge as a reward for any module)."""

from lightning_rec.modules.adapter_finetune import AdapterFineTune
from lightning_rec.modules.causal_lm import CausalLM
from lightning_rec.modules.diffureason import DiffuReason
from lightning_rec.modules.flyprompt import FlyPrompt
from lightning_rec.modules.gpr import GPR
from lightning_rec.modules.most_popular import MostPopular
from lightning_rec.modules.r2rank import ReasoningToRank
from lightning_rec.modules.ranking_module import RankingModule
from lightning_rec.modules.rewards import ItemReward, JudgeReward
from lightning_rec.modules.sasrec import SASRec
from lightning_rec.modules.sequential_recommender import SequentialRecommender
from lightning_rec.modules.sgrec import SGRec

__all__ = [
    "GPR",
    "AdapterFineTune",
    "CausalLM",
    "DiffuReason",
    "FlyPrompt",
    "ItemReward",
    "JudgeReward",
    "MostPopular",
    "RankingModule",
    "ReasoningToRank",
    "SASRec",
    "SGRec",
    "SequentialRecommender",
]
