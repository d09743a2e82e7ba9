"""Every prompt of AgentFlow, in one place.

The contracts follow the published AgentFlow (lupantech/AgentFlow): the planner ends
with `Context / Sub-Goal / Tool Name`, the verifier with `Conclusion: STOP|CONTINUE`,
the generator answers from memory. The wording is written for small models too: the
default planner is a 135M model, which follows a format far better when it sees one
worked example and when its turn is started for it (docs/design.md §1). Each prompt is a
template filled with `str.format`; `*_PREFIX` strings start the assistant's turn, and the
`*_SHOT*` / `*_REMINDER` texts stand in for that start with served models, which cannot
continue a started turn. Where each module's reply ends (its stop rule) is defined beside
its parser, in `agentflow/nodes/stops.py`.
"""

PLANNER_SYSTEM = """You are the planner of a team that answers questions with tools.
Pick ONE next step: a short sub-goal and the ONE tool that achieves it.

Tools:
{tool_cards}

Answer in exactly this format:
Sub-Goal: <what to do next, with the exact numbers or names needed>
Tool Name: <one of: {tool_names}>
Context: <facts from earlier steps the tool needs, or none>

{examples}"""

# One worked example per kind of tool the planner has; a 135M planner copies what it sees,
# so each example shows its own kind of question.
PLANNER_EXAMPLE = """Example:
Question: {question}
Sub-Goal: {sub_goal}
Tool Name: {tool}
Context: none"""

PLANNER_EXAMPLES = {
    "calculator": ("What is 4821 * 377?", "Multiply 4821 by 377."),
    "python": ("What is 4821 * 377?", "Multiply 4821 by 377."),
    "local_search": ("When was the town of Velmora founded?", "Find the founding year of Velmora."),
    "wikipedia_search": ("When was the Eiffel Tower built?", "Find when the Eiffel Tower was built."),
    "web_search": ("Who won the 2022 Nobel Prize in Physics?", "Find the 2022 Nobel Prize in Physics winners."),
}

PLANNER_USER = """Question: {query}

Steps so far:
{memory}"""

PLANNER_PREFIX = "Sub-Goal:"

EXECUTOR_SYSTEM = """You write the input for one tool call.
Tool: {tool_name}
{tool_card}

Reply with only the JSON arguments of the call, for example:
{example}"""

EXECUTOR_USER = """Question: {query}
Sub-Goal: {sub_goal}
Context: {context}"""

EXECUTOR_PREFIX = ""

# One worked call for the tools whose arguments a small model gets wrong. Shown only
# `{"query": "..."}`, the 135M executor searched for the number in the question ("2018")
# instead of the town's name in 52 of 65 ToolMix look-ups; with this example, look-ups
# whose search query named nothing useful fell from 18 to 6 of 28 (benchmarks/failures.py,
# docs/design.md §1). Appended to EXECUTOR_SYSTEM for the tools listed here.
EXECUTOR_EXAMPLE = """

Example:
Sub-Goal: {sub_goal}
{call}

Use the names and numbers from the sub-goal and the question."""

EXECUTOR_EXAMPLES = {
    "local_search": ("Find the founding year of Velmora.", '{"query": "Velmora founded"}'),
    "calculator": ("Multiply 4821 by 377.", '{"expression": "4821 * 377"}'),
}

VERIFIER_SYSTEM = """You decide if the question is already answered by the results of the steps.
Reply STOP if a result answers the question, CONTINUE if more work is needed.
End with exactly one line: Conclusion: STOP or Conclusion: CONTINUE"""

VERIFIER_USER = """Question: {query}

Steps so far:
{memory}

Is the question answered? Reply STOP or CONTINUE."""

VERIFIER_PREFIX = "Conclusion:"

GENERATOR_SYSTEM = """You answer the question using the results of the steps below.
Trust the tool results; give the final answer briefly."""

GENERATOR_ANSWER_TAGS = " Put the final answer inside <answer></answer>."

# The answer-format instruction some benchmark queries carry (docs/design.md §5; the shipped
# aime24/bamboogle/hotpotqa queries end with exactly this, glued to the question without a
# space), appended by `agentflow.evals.with_answer_instruction` where missing. It is for the generator, which
# writes the final answer: the other modules see the question without it
# (`agentflow.extract.question_only`).
ANSWER_INSTRUCTION = (
    "When ready, output the final answer enclosed in <answer> and </answer> tags. "
    "Do not generate any content after the </answer> tag."
)

GENERATOR_USER = """Question: {query}

Steps so far:
{memory}

Final answer:"""

BASE_GENERATOR_SYSTEM = (
    "You are a helpful assistant. Answer the request directly and concisely. "
    "If you are not sure, say so instead of guessing."
)

NO_STEPS = "(none yet)"

# "Tool Name:" as in the planner's contract: a small planner that copies an earlier
# step still produces a parsable action.
MEMORY_RECORD = """Step {turn}: {sub_goal}
  Tool Name: {tool_name}
  Command: {command}
  Result: {outcome}"""

# --------------------------------------------------------------------------- ReAct baseline
# The monolithic baseline of the eval harness (`agentflow eval --system react`): LangGraph's
# prebuilt ReAct agent over a model without native tool calling. `TextToolCallingChatModel`
# renders the tools into this system prompt and parses the call back out of the text.

REACT_SYSTEM = """You answer questions. You may call tools, one at a time.

Tools:
{tool_descriptions}

To call a tool, reply in exactly this format:
Thought: <what to do next>
Action: <one of: {tool_names}>
Action Input: <the JSON arguments of the call>

You will then get the Observation. When you know the answer, reply:
Thought: I know the answer.
Final Answer: <the answer>

Example:
Question: What is 4821 * 377?
Thought: Multiply the numbers.
Action: {example_tool}
Action Input: {example_input}"""

REACT_OBSERVATION = "Observation: {result}"

REACT_PREFIX = "Thought:"

# LLM judge (agentflow.evals.scoring.judge_score, `agentflow eval --judge-model`)

JUDGE_PROMPT = """\
You are grading an answer. Given a question, its ground-truth answer and a response, decide
whether the response's final answer is equivalent to the ground truth.

Instructions:
1. Extract the final answer from the response (ignore the reasoning that leads to it).
2. Compare it with the ground truth: equivalent if it has the same meaning or value,
   allowing different wording, formatting, units written out, or equivalent numeric forms.
   For multiple choice, the chosen option must be the correct one. A response that gives
   several different answers, or none, is not equivalent.
3. Do not solve the question yourself; only compare.

Question: {question}
Response: {response}
Ground truth: {gold}

Write a one-sentence analysis, then end with exactly one line:
true_false: True
or
true_false: False"""
"""Modelled on the published AgentFlow protocol (GPT-4o asked whether the response is
equivalent to the ground truth, replying with an analysis and a True/False verdict)."""

# --------------------------------------------------------------------------- served models
# Served chat APIs do not continue a started assistant turn (docs/design.md §1), and without
# `Sub-Goal:` to continue, the 135M planner answered the question instead of planning. Served
# modules get the same system prompt, then worked exchanges as real chat turns (a user turn
# in the module's own format, the assistant reply its contract wants), then the real user
# turn ending with a format reminder. The planner's and executor's exchanges are built from
# PLANNER_EXAMPLES / EXECUTOR_EXAMPLES, one per kind of tool, as in their system prompts.

PLANNER_SHOT_REPLY = """Sub-Goal: {sub_goal}
Tool Name: {tool}
Context: none"""

PLANNER_REMINDER = """

Reply with exactly three lines: Sub-Goal: ..., Tool Name: ..., Context: ..."""

EXECUTOR_REMINDER = """

Reply with only the JSON arguments of the {tool_name} call."""

# (question, steps so far, conclusion): one exchange per outcome, the answered one last.
VERIFIER_SHOTS = (
    ("When was the town of Velmora founded?", "(none yet)", "Conclusion: CONTINUE"),
    (
        "What is 4821 * 377?",
        """Step 1: Multiply 4821 by 377.
  Tool Name: calculator
  Command: {"expression": "4821 * 377"}
  Result: 1817517""",
        "Conclusion: STOP",
    ),
)

VERIFIER_REMINDER = """

Reply with one line: Conclusion: STOP or Conclusion: CONTINUE"""
