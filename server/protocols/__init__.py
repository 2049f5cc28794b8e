"""The wire formats of the APIs llava-serve speaks, one module each, all onto the one pipeline.

Each module is an adapter: its API's request -> the one internal request (a
`ChatCompletionRequest`, plus a completion's raw prompt, handed to `pipeline.run`), and the one result (`completion.ChoiceResult`s, or a stream of `completion.Piece`s) -> its API's answer.
None of them admits, loads media, builds a prompt, compiles a grammar or generates: that is
server/pipeline.py, the same for all. chat.py: /v1/chat/completions; completions.py:
/v1/completions; tokenize.py: /tokenize, /detokenize; messages.py: Anthropic's /v1/messages;
responses.py (request) and response_output.py (answer): /v1/responses, whose stored turns keep
their media by content through stored_media.py.
"""
