"""Training data for tiny models: a synthetic closed-book QA knowledge base and Python code.

Everything is deterministic: the same arguments give the same facts, documents and batches.

    knowledge_base.py  Fact, KnowledgeBase: a made-up world (names.py, templates.py) of people,
                       countries, cities and rivers, three facts each, TriviaQA-style questions
    qa.py              qa_prompt, qa_documents: the evaluation prompt and training documents
    stdlib_code.py     stdlib_files, code_documents: the standard library's source, in chunks
    code_task.py       make_problems, train_documents: small Python functions in HumanEval's
                       format, held out by composition (the synthetic_code task)
    stream.py          TokenStream: packed, padded batches, a pure function of the step

``QAExample`` is the TriviaQA task's example type (``kvpred.tasks.triviaqa``), and ``qa_prompt``
builds the same text as its ``one_shot_prompt``, so the synthetic QA set runs through the same
evaluation as TriviaQA itself.
"""

from kvpred.data.knowledge_base import FORBIDDEN_IN_ANSWER, SPLITS, Fact, KnowledgeBase
from kvpred.data.names import PROFESSIONS, RELATIONS
from kvpred.data.qa import qa_documents, qa_prompt
from kvpred.data.stdlib_code import MAX_FILE_BYTES, code_documents, stdlib_files
from kvpred.data.stream import TokenStream
from kvpred.tasks.triviaqa import QAExample

__all__ = [
    "FORBIDDEN_IN_ANSWER",
    "MAX_FILE_BYTES",
    "PROFESSIONS",
    "RELATIONS",
    "SPLITS",
    "Fact",
    "KnowledgeBase",
    "QAExample",
    "TokenStream",
    "code_documents",
    "qa_documents",
    "qa_prompt",
    "stdlib_files",
]
