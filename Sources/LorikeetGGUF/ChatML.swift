import Foundation

/// ChatML rendering as declared by SmolLM2's `tokenizer.chat_template`:
///
/// ```jinja
/// {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
/// {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
/// {% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
/// {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
/// ```
///
/// The default system prompt is read from the template text, not hard-coded, so a ChatML
/// model without one (or with another) renders as its own template does.
package enum ChatML {
    /// The literal system message a ChatML template inserts when the first message is not
    /// `system`, or nil when the template inserts none.
    package static func defaultSystemPrompt(in template: String) -> String? {
        guard template.contains("messages[0]['role'] != 'system'") else { return nil }
        let opener = "'<|im_start|>system\n"
        guard let start = template.range(of: opener),
            let end = template.range(of: "<|im_end|>", range: start.upperBound..<template.endIndex)
        else { return nil }
        return String(template[start.upperBound..<end.lowerBound])
    }

    /// Renders `messages` as ChatML text (special tokens spelled out; encode with `parseSpecial`).
    package static func render(
        _ messages: [ChatMessage],
        defaultSystemPrompt: String?,
        addGenerationPrompt: Bool
    ) -> String {
        var out = ""
        for (i, message) in messages.enumerated() {
            if i == 0, message.role != "system", let system = defaultSystemPrompt {
                out += "<|im_start|>system\n\(system)<|im_end|>\n"
            }
            out += "<|im_start|>\(message.role)\n\(message.content)<|im_end|>\n"
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }
}
